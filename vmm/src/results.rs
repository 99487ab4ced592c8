//! Reading what the guest reported, as untrusted data: every count and
//! length is checked against the contract before use, and a bad value is an
//! error that names the field. Also the failure reports of a run.

use std::fmt;
use std::time::Duration;

use abi::{
    guest_mode, native_error, panic_state, verdict, Design, DesignResults, FieldError, GuestStatus,
    Histogram, Pod, SharedPage, TaskProgress, VcpuResults, VcpuStatus, ViolationRecord,
};

use crate::inject::HostReport;
use crate::machine::{BootReport, MachineConfig};
use crate::vcpu::{RegisterDump, VcpuFault};

/// Where and why the guest panicked, as it recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicDetails {
    /// vCPU that panicked.
    pub vcpu: u32,
    /// Source file (lossy UTF-8).
    pub file: String,
    /// Line.
    pub line: u32,
    /// Column.
    pub column: u32,
    /// Message (lossy UTF-8).
    pub message: String,
}

/// A CPU exception, as the guest recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionDetails {
    /// vCPU.
    pub vcpu: u32,
    /// Vector (0..32).
    pub vector: u64,
    /// Error code.
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// CR2.
    pub cr2: u64,
    /// Privilege level at the fault.
    pub cpl: u64,
    /// Task id and name.
    pub task: (u64, String),
}

/// The mnemonic of exception `vector`.
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "(15)", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "(22)", "(23)", "(24)",
        "(25)", "(26)", "(27)", "#HV", "#VC", "#SX", "(31)",
    ];
    NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("(bad vector)")
}

/// What went wrong in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A Rust panic in the guest (details when the record was readable).
    Panic(Option<PanicDetails>),
    /// A CPU exception the guest reported (details when the record was
    /// readable), and the vCPU that reported it.
    Exception(Option<ExceptionDetails>, u32),
    /// A vCPU stopped on a fault (triple fault, unknown port, ...).
    Fault {
        /// Which vCPU.
        vcpu: u32,
        /// What it did.
        fault: VcpuFault,
    },
    /// The results page breaks the contract.
    InvalidResults(FieldError),
    /// Not every vCPU came online.
    NotAllOnline {
        /// How many did.
        online: u32,
        /// How many exist.
        vcpus: u32,
        /// The first few that did not.
        missing: Vec<u32>,
    },
    /// An AP reported a status only the BSP may report (`StartAps`,
    /// `AllOnline`, `Done`).
    StatusFromAp {
        /// The AP that wrote it.
        vcpu: u32,
        /// What it reported.
        status: GuestStatus,
    },
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Panic(Some(p)) => {
                write!(
                    f,
                    "guest panicked on vCPU {} at {}:{}:{}: {}",
                    p.vcpu, p.file, p.line, p.column, p.message
                )
            }
            FailureKind::Panic(None) => write!(f, "guest panicked (no readable panic record)"),
            FailureKind::Exception(Some(e), _) => write!(
                f,
                "guest exception {} (vector {}) on vCPU {} at rip={:#x} (CPL{}), error code {:#x}, cr2={:#x}, task {} '{}'",
                exception_name(e.vector),
                e.vector,
                e.vcpu,
                e.rip,
                e.cpl,
                e.error_code,
                e.cr2,
                e.task.0,
                e.task.1
            ),
            FailureKind::Exception(None, vcpu) => {
                write!(f, "guest exception on vCPU {vcpu} (no readable exception record)")
            }
            FailureKind::Fault { vcpu, fault } => write!(f, "vCPU {vcpu} stopped: {fault}"),
            FailureKind::InvalidResults(e) => write!(f, "guest wrote invalid results: {e}"),
            FailureKind::NotAllOnline {
                online,
                vcpus,
                missing,
            } => {
                write!(
                    f,
                    "only {online}/{vcpus} vCPUs came online (missing: {missing:?})"
                )
            }
            FailureKind::StatusFromAp { vcpu, status } => write!(
                f,
                "vCPU {vcpu} reported {status:?}, which only the BSP (vCPU 0) may report: \
                 the guest broke the status contract"
            ),
        }
    }
}

/// A guest failure with the state of every vCPU when it was stopped.
#[derive(Debug)]
pub struct GuestFailure {
    /// What happened.
    pub kind: FailureKind,
    /// Registers of every vCPU after the stop.
    pub dumps: Vec<RegisterDump>,
    /// The last console lines.
    pub console_tail: Vec<String>,
}

impl fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

/// The watchdog fired.
#[derive(Debug)]
pub struct WatchdogReport {
    /// The deadline that passed.
    pub timeout: Duration,
    /// vCPUs online when it fired (as the guest reported, bounded).
    pub online: u32,
    /// vCPUs in the guest.
    pub vcpus: u32,
    /// The first few vCPUs whose status entry never said online.
    pub missing: Vec<u32>,
    /// Registers of every vCPU after the stop.
    pub dumps: Vec<RegisterDump>,
    /// The last console lines.
    pub console_tail: Vec<String>,
    /// How long the VMM itself was stalled before it fired (not counted
    /// in the deadline, which the stalls pushed back); None: never.
    pub vmm_stalled: Option<Duration>,
}

impl fmt::Display for WatchdogReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watchdog: the guest did not finish within {:?} ({}/{} vCPUs online)",
            self.timeout, self.online, self.vcpus
        )?;
        if !self.missing.is_empty() {
            write!(f, "; never came online: vCPUs {:?}", self.missing)?;
        }
        write!(f, "; every vCPU was stopped")?;
        if let Some(stalled) = self.vmm_stalled {
            write!(
                f,
                " (the VMM itself was also stopped or starved for {:.0} ms, not counted in the {:?}: \
                 the guest had its full time)",
                stalled.as_secs_f64() * 1e3,
                self.timeout
            )?;
        }
        Ok(())
    }
}

/// The first `limit` of the first `vcpus` vCPUs whose status entry does not
/// say online (any other value counts as not online).
pub fn offline_vcpus(page: &SharedPage, vcpus: u32, limit: usize) -> Vec<u32> {
    (0..vcpus)
        .zip(page.vcpus.iter())
        .filter(|(_, s)| s.state != abi::vcpu_state::ONLINE)
        .map(|(i, _)| i)
        .take(limit)
        .collect()
}

/// What a run stopped by SIGINT or SIGTERM had collected: the boot figures
/// so far and the host block (injectors stopped, affinities restored).
#[derive(Debug)]
pub struct PartialReport {
    /// The signal that stopped the run.
    pub signal: i32,
    /// From VM creation to the stop.
    pub elapsed: Duration,
    /// vCPUs created.
    pub vcpus: u32,
    /// vCPUs whose status entry said online at the stop.
    pub online: u32,
    /// VM creation to `AllOnline`, if the guest got that far.
    pub boot_time: Option<Duration>,
    /// Guest TSC frequency (kHz).
    pub tsc_khz: u64,
    /// Host-side figures up to the stop.
    pub host: HostReport,
}

impl fmt::Display for PartialReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupted by {} after {:.2} s: the run was stopped (vCPUs kicked, injectors \
             stopped, affinities restored: {}); the report is partial",
            crate::signals::name(self.signal),
            self.elapsed.as_secs_f64(),
            if !self.host.active || self.host.affinity_restored {
                "yes"
            } else {
                "NO"
            }
        )
    }
}

/// Fills in what the page says about a failure: the panic record for a
/// panic, and for a vCPU that stopped while its panic handler was still
/// formatting the message, the panic it was reporting.
pub fn explain(kind: FailureKind, page: &SharedPage) -> FailureKind {
    let state = page.results.panic.state;
    match kind {
        FailureKind::Panic(None) if state == panic_state::COMPLETE => {
            FailureKind::Panic(Some(panic_details(page)))
        }
        FailureKind::Exception(None, vcpu) if page.results.exception.valid != 0 => {
            FailureKind::Exception(Some(exception_details(page)), vcpu)
        }
        FailureKind::Fault {
            vcpu,
            fault: fault @ VcpuFault::InternalError { .. },
        } if state == panic_state::LOCATION && page.results.panic.vcpu == vcpu => {
            let mut details = panic_details(page);
            details.message = format!("<the vCPU stopped while formatting the message: {fault}>");
            FailureKind::Panic(Some(details))
        }
        other => other,
    }
}

fn exception_details(page: &SharedPage) -> ExceptionDetails {
    let e = &page.results.exception;
    let name_len = e
        .task_name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(e.task_name.len());
    ExceptionDetails {
        vcpu: e.vcpu,
        vector: e.vector,
        error_code: e.error_code,
        rip: e.rip,
        cr2: e.cr2,
        cpl: e.cs & 3,
        task: (
            e.task_id,
            String::from_utf8_lossy(&e.task_name[..name_len]).into_owned(),
        ),
    }
}

fn panic_details(page: &SharedPage) -> PanicDetails {
    let p = &page.results.panic;
    let message = if p.state == panic_state::COMPLETE {
        p.message_bytes()
    } else {
        &[]
    };
    PanicDetails {
        vcpu: p.vcpu,
        file: String::from_utf8_lossy(p.file_bytes()).into_owned(),
        line: p.line,
        column: p.column,
        message: String::from_utf8_lossy(message).into_owned(),
    }
}

/// One vCPU's scheduler counters (also the JSON's `guest.vcpus[]` fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VcpuCounters {
    /// Context switches.
    pub context_switches: u64,
    /// Involuntary switches on return from interrupt.
    pub preemptions: u64,
    /// Tasks that migrated to this vCPU.
    pub migrations_in: u64,
    /// Timer ticks.
    pub ticks: u64,
    /// IPIs sent.
    pub ipis_sent: u64,
    /// IPIs received.
    pub ipis_received: u64,
    /// CPU hotplug of this vCPU (all zero without hotplug).
    #[serde(default)]
    pub hotplug: VcpuHotplugCounts,
}

/// One vCPU's CPU hotplug counters over the run (JSON
/// `guest.vcpus[].hotplug`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VcpuHotplugCounts {
    /// Times it went offline.
    pub offlines: u32,
    /// Times it came back online.
    pub onlines: u32,
    /// Cross-call IPIs sent to it while it was offline (0 unless the model
    /// broke; counted by the senders).
    pub ipis_offline: u32,
    /// Tasks moved off it when it went offline.
    pub tasks_moved: u32,
    /// Context switches since it first came back online (0: it never
    /// came back, or ran nothing since).
    pub switches_since_online: u64,
    /// Time it spent offline, TSC cycles.
    pub offline_cycles: u64,
}

/// What CPU hotplug did during one design's phase (JSON
/// `designs[].hotplug`; see [`abi::HotplugCounts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HotplugReport {
    /// vCPUs the guest took offline.
    pub offlines: u64,
    /// vCPUs it brought back.
    pub onlines: u64,
    /// Requests it refused.
    pub refused: u64,
    /// Tasks moved off dying vCPUs.
    pub tasks_moved: u64,
    /// Call targets left out because they were offline.
    pub skipped_targets: u64,
    /// `smp_call_function_single()` calls refused: target offline.
    pub single_offline_errors: u64,
    /// Callbacks dying vCPUs ran in their flush.
    pub flushed_callbacks: u64,
    /// csds dying vCPUs dropped unrun (no-dying-flush).
    pub dropped_csds: u64,
}

impl From<abi::HotplugCounts> for HotplugReport {
    fn from(h: abi::HotplugCounts) -> Self {
        HotplugReport {
            offlines: h.offlines,
            onlines: h.onlines,
            refused: h.refused,
            tasks_moved: h.tasks_moved,
            skipped_targets: h.skipped_targets,
            single_offline_errors: h.single_offline_errors,
            flushed_callbacks: h.flushed_callbacks,
            dropped_csds: h.dropped_csds,
        }
    }
}

/// The PV figures of one design phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PvCounts {
    /// Send-IPI hypercalls.
    pub send_ipi_calls: u64,
    /// Directed yields (sched-yield hypercalls).
    pub yields: u64,
    /// Yields that ended an injected pause early.
    pub yields_effective: u64,
    /// Shootdown targets deferred (flush-defer).
    pub deferrals: u64,
    /// Deferred callbacks their targets ran.
    pub deferred_runs: u64,
    /// Of those committed, run at the target's next observable action
    /// rather than first thing on resume (the FLUSH_DEFER interrupt).
    pub deferred_not_first: u64,
    /// csd waits that saw their target preempted.
    pub waits_on_preempted: u64,
    /// Their total time from the first sighting to the wait's end (cycles).
    pub preempted_wait_cycles: u64,
    /// ... through KVM's steal-time flag.
    pub preempted_seen_kvm: u64,
    /// ... through ipivirt's PV state.
    pub preempted_seen_ipivirt: u64,
}

/// One design's results, validated.
#[derive(Debug, Clone)]
pub struct DesignReport {
    /// The design.
    pub design: Design,
    /// [`abi::pv`] features of the phase (0: the plain design).
    pub pv: u32,
    /// Those KVM's mechanism served.
    pub pv_kvm: u32,
    /// PV counters.
    pub pv_counts: PvCounts,
    /// Cross calls completed.
    pub calls: u64,
    /// Callbacks run.
    pub callbacks: u64,
    /// Invariant violations.
    pub violations: u64,
    /// Time from phase start to the first violation (cycles).
    pub first_violation_cycles: Option<u64>,
    /// Waits during which the waiting task was switched out.
    pub waits_preempted: u64,
    /// Waits that resumed on another vCPU.
    pub waits_migrated: u64,
    /// Extra bytes each task carries.
    pub mask_bytes_per_task: u64,
    /// Stack bytes per call for the mask (stack design).
    pub stack_bytes_per_call: u64,
    /// Mask allocations.
    pub mask_allocs: u64,
    /// Mask frees.
    pub mask_frees: u64,
    /// Fallbacks to the pinned wait (alloc-in-path).
    pub fallbacks: u64,
    /// csd-lock waits over the watchdog threshold.
    pub csd_watchdog_fires: u64,
    /// Requests the checker could not track, plus tasks that could not be created.
    pub unchecked: u64,
    /// Tasks created in the phase.
    pub tasks_created: u64,
    /// Mean task creation time (cycles).
    pub task_create_mean_cycles: u64,
    /// Phase length (cycles).
    pub phase_cycles: u64,
    /// Cross-call latency (cycles).
    pub call_latency: Box<Histogram>,
    /// Probe lateness during the phase (cycles).
    pub sched_latency: Box<Histogram>,
    /// The first violations.
    pub violation_log: Vec<ViolationRecord>,
    /// CPU hotplug during the phase.
    pub hotplug: HotplugReport,
    /// The issuers and hogs the phase spawned.
    pub shape: abi::ShapeCounts,
    /// How the phase ended.
    pub phase_end: PhaseEndReport,
    /// Memory measured from the guest allocator.
    pub memory: abi::MemoryResults,
    /// The preempt-off tracer's figures of the phase.
    pub preempt_off: PreemptOffReport,
    /// Probe lateness, due time to the timer interrupt that woke it (cycles).
    pub probe_arrival: Box<Histogram>,
    /// Probe lateness, that interrupt to the probe running (cycles).
    pub probe_dispatch: Box<Histogram>,
}

/// The mask bytes of Linux's NR_CPUS=8192 (for the computed figures).
pub const NR_CPUS_8192_MASK_BYTES: u64 = 8192 / 8;

/// A task's name from its NUL-padded bytes.
pub fn task_name(name: &[u8; 16]) -> String {
    String::from_utf8_lossy(name)
        .trim_end_matches('\0')
        .to_string()
}

/// How a design's phase ended ([`abi::PhaseEnd`], validated).
#[derive(Debug, Clone)]
pub struct PhaseEndReport {
    /// An [`abi::phase_status`] value.
    pub status: u32,
    /// Tasks still alive at the bound (stall).
    pub stalled_tasks: u32,
    /// vCPUs whose call queue did not drain within the bound.
    pub undrained_vcpus: u32,
    /// The first of them.
    pub first_undrained: Option<u32>,
    /// Cycles from the phase's end to quiescence or the give-up.
    pub quiesce_cycles: u64,
    /// The bound in cycles.
    pub bound_cycles: u64,
    /// The stalled tasks recorded (at most [`abi::STALL_RECORDS`]).
    pub stalled: Vec<abi::StalledTask>,
}

impl PhaseEndReport {
    /// `quiesced`, `stalled` or `not-run`.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            abi::phase_status::QUIESCED => "quiesced",
            abi::phase_status::STALLED => "stalled",
            _ => "not-run",
        }
    }

    /// Whether the phase stalled.
    pub fn stalled(&self) -> bool {
        self.status == abi::phase_status::STALLED
    }
}

/// The preempt-off tracer's figures of one phase, validated (TSC cycles):
/// per vCPU the longest non-preemptible section of each window, and their
/// P50/P99/max.
#[derive(Debug, Clone, Default)]
pub struct PreemptOffReport {
    /// Whether the tracer ran (it is off only with the hidden
    /// `--no-preempt-trace`).
    pub enabled: bool,
    /// The window (cycles).
    pub window_cycles: u64,
    /// Sections that ended in the phase, all vCPUs.
    pub sections: u64,
    /// Sections the tracer found open where none could be (0 in a correct
    /// kernel; dropped, not measured).
    pub unmatched: u64,
    /// Every vCPU's window maxima.
    pub window_max: Box<Histogram>,
    /// Per cause ([`abi::preempt_off::cause`]): windows whose longest
    /// section it was, and the longest of those.
    pub causes: [abi::PreemptOffCause; abi::preempt_off::cause::COUNT],
    /// Per vCPU, in vCPU order.
    pub per_cpu: Vec<abi::PreemptOffCpu>,
}

impl PreemptOffReport {
    /// The P99 over all vCPUs' window maxima in ns (None: no window was
    /// measured). The figure the series reports, per design.
    pub fn p99_ns(&self, tsc_khz: u64) -> Option<u64> {
        (self.enabled && self.window_max.count > 0)
            .then(|| crate::scenario::cycles_to_ns(self.window_max.quantile_ppm(990_000), tsc_khz))
    }
}

fn preempt_off_report(
    p: &abi::PreemptOffResults,
    vcpus: u32,
) -> Result<PreemptOffReport, FieldError> {
    let bad = |field, found: u64, expected| FieldError {
        field,
        found,
        expected,
    };
    if p.enabled > 1 {
        return Err(bad(
            "designs[].preempt_off.enabled",
            p.enabled.into(),
            "0 or 1",
        ));
    }
    p.window_max.validate("designs[].preempt_off.window_max")?;
    let n = (vcpus as usize).min(abi::MAX_VCPUS);
    let per_cpu = p.per_cpu[..n].to_vec();
    if let Some(i) = per_cpu.iter().position(|c| !c.is_consistent()) {
        return Err(bad(
            "designs[].preempt_off.per_cpu",
            i as u64,
            "p50 <= p99 <= max, all 0 without windows",
        ));
    }
    let windows: u64 = per_cpu
        .iter()
        .map(|c| c.windows)
        .fold(0, u64::saturating_add);
    if windows != p.window_max.count || per_cpu.iter().any(|c| c.max > p.window_max.max) {
        return Err(bad(
            "designs[].preempt_off.window_max",
            p.window_max.count,
            "the per-vCPU windows merged",
        ));
    }
    let attributed = p
        .causes
        .iter()
        .map(|c| c.windows)
        .fold(0, u64::saturating_add);
    if attributed > windows || p.causes.iter().any(|c| c.max > p.window_max.max) {
        return Err(bad(
            "designs[].preempt_off.causes",
            attributed,
            "at most the windows, none longer than the longest",
        ));
    }
    if p.enabled == 1 && p.window_cycles == 0 {
        return Err(bad("designs[].preempt_off.window_cycles", 0, "above 0"));
    }
    Ok(PreemptOffReport {
        enabled: p.enabled == 1,
        window_cycles: p.window_cycles,
        sections: p.sections,
        unmatched: p.unmatched,
        window_max: Box::new(p.window_max),
        causes: p.causes,
        per_cpu,
    })
}

impl DesignReport {
    /// The column name: the design, plus `+feature` for each PV feature
    /// of the phase that changes the cross-call path (steal time and
    /// `preempted` alone only observe), e.g. `task-local+sched-yield`.
    pub fn label(&self) -> String {
        let shown = self.pv & !(abi::pv::STEAL_TIME | abi::pv::PREEMPTED);
        if shown == 0 {
            self.design.name().to_string()
        } else {
            format!("{}+{}", self.design.name(), crate::pv::feature_names(shown))
        }
    }
}

fn design_report(
    d: &DesignResults,
    expected: Design,
    expected_pv: u32,
    index: usize,
    vcpus: u32,
) -> Result<DesignReport, FieldError> {
    let field = |name| FieldError {
        field: name,
        found: 0,
        expected: "",
    };
    if d.valid != 1 {
        return Err(FieldError {
            found: d.valid.into(),
            expected: "1 (results written)",
            ..field("designs[].valid")
        });
    }
    if d.design != expected as u32 {
        return Err(FieldError {
            found: d.design.into(),
            expected: "the design run in this slot",
            ..field("designs[].design")
        });
    }
    // Steal time is run-wide and registered wherever KVM offers it, asked
    // for or not (the VMM decides from KVM's CPUID).
    let beyond_steal = |pv: u32| pv & !abi::pv::STEAL_TIME;
    if beyond_steal(d.pv) != beyond_steal(expected_pv) || d.pv_kvm & !d.pv != 0 {
        return Err(FieldError {
            found: d.pv.into(),
            expected: "the PV features of this slot (pv_kvm a subset)",
            ..field("designs[].pv")
        });
    }
    if d.pv_yields_effective > d.pv_yields
        || d.pv_deferred_not_first > d.pv_deferred_runs
        || d.preempted_seen_kvm > d.waits_on_preempted
        || d.preempted_seen_ipivirt > d.waits_on_preempted
    {
        return Err(FieldError {
            found: d.pv_yields_effective,
            expected: "effective yields <= yields, sightings <= waits on preempted",
            ..field("designs[].pv_yields_effective")
        });
    }
    if u64::from(d.shape.issuers) + u64::from(d.shape.hogs) > d.tasks_created {
        return Err(FieldError {
            found: u64::from(d.shape.issuers) + u64::from(d.shape.hogs),
            expected: "issuers + hogs <= the tasks the phase created",
            ..field("designs[].shape")
        });
    }
    d.call_latency.validate("designs[].call_latency")?;
    d.sched_latency.validate("designs[].sched_latency")?;
    let e = &d.phase_end;
    if !(abi::phase_status::QUIESCED..=abi::phase_status::NOT_RUN).contains(&e.status) {
        return Err(FieldError {
            found: e.status.into(),
            expected: "a phase status (1 quiesced, 2 stalled, 3 not run)",
            ..field("designs[].phase_end.status")
        });
    }
    let m = &d.memory;
    if m.hook_failures > m.hook_tasks {
        return Err(FieldError {
            found: m.hook_failures,
            expected: "hook failures <= hook tasks",
            ..field("designs[].memory.hook_failures")
        });
    }
    let recorded = (e.stalled_tasks as usize).min(abi::STALL_RECORDS);
    let phase_end = PhaseEndReport {
        status: e.status,
        stalled_tasks: e.stalled_tasks,
        undrained_vcpus: e.undrained_vcpus,
        first_undrained: (e.first_undrained != u32::MAX).then_some(e.first_undrained),
        quiesce_cycles: e.quiesce_cycles,
        bound_cycles: e.bound_cycles,
        stalled: e.stalled[..recorded]
            .iter()
            .filter(|t| t.id != 0)
            .copied()
            .collect(),
    };
    d.probe_split
        .arrival
        .validate("designs[].probe_split.arrival")?;
    d.probe_split
        .dispatch
        .validate("designs[].probe_split.dispatch")?;
    let preempt_off = preempt_off_report(&d.preempt_off, vcpus)?;
    let logged = d.violations.min(8) as usize;
    let log = d.violation_log[..logged].to_vec();
    if log
        .iter()
        .any(|v| !(abi::violation::NOT_RUN..=abi::violation::LAST).contains(&v.kind))
    {
        return Err(FieldError {
            found: index as u64,
            expected: "known violation kinds",
            ..field("designs[].violation_log")
        });
    }
    Ok(DesignReport {
        design: expected,
        pv: d.pv,
        pv_kvm: d.pv_kvm,
        pv_counts: PvCounts {
            send_ipi_calls: d.pv_send_ipi_calls,
            yields: d.pv_yields,
            yields_effective: d.pv_yields_effective,
            deferrals: d.pv_deferrals,
            deferred_runs: d.pv_deferred_runs,
            deferred_not_first: d.pv_deferred_not_first,
            waits_on_preempted: d.waits_on_preempted,
            preempted_wait_cycles: d.preempted_wait_cycles,
            preempted_seen_kvm: d.preempted_seen_kvm,
            preempted_seen_ipivirt: d.preempted_seen_ipivirt,
        },
        calls: d.calls,
        callbacks: d.callbacks,
        violations: d.violations,
        first_violation_cycles: (d.first_violation_cycles != u64::MAX)
            .then_some(d.first_violation_cycles),
        waits_preempted: d.waits_preempted,
        waits_migrated: d.waits_migrated,
        mask_bytes_per_task: d.mask_bytes_per_task,
        stack_bytes_per_call: d.stack_bytes_per_call,
        mask_allocs: d.mask_allocs,
        mask_frees: d.mask_frees,
        fallbacks: d.fallbacks,
        csd_watchdog_fires: d.csd_watchdog_fires,
        unchecked: d.unchecked,
        tasks_created: d.tasks_created,
        task_create_mean_cycles: d
            .task_create_cycles
            .checked_div(d.tasks_created)
            .unwrap_or(0),
        phase_cycles: d.phase_cycles,
        shape: d.shape,
        call_latency: Box::new(d.call_latency),
        sched_latency: Box::new(d.sched_latency),
        violation_log: log,
        phase_end,
        memory: d.memory,
        preempt_off,
        probe_arrival: Box::new(d.probe_split.arrival),
        probe_dispatch: Box::new(d.probe_split.dispatch),
        hotplug: d.hotplug.into(),
    })
}

/// What the guest kernel reported beyond the boot.
#[derive(Debug, Clone, Default)]
pub struct GuestReport {
    /// TSC cycles per 1024 iterations of `dec; jnz` at CPL0.
    pub cpl0_cycles_per_kiter: u64,
    /// The same at CPL3 (0: not measured).
    pub cpl3_cycles_per_kiter: u64,
    /// "hardware-accelerated", "CPL0 emulated: ..." or "not measured".
    pub verdict: &'static str,
    /// Scheduler tick (Hz).
    pub tick_hz: u32,
    /// The kernel mode that ran: `plain` or `pvm-native`.
    pub mode: &'static str,
    /// Why native mode did not run although asked for (None: it ran, or it
    /// was not asked for).
    pub native_error: Option<&'static str>,
    /// One system call round trip from a user task, TSC cycles (0: not
    /// measured).
    pub trap_cycles: u64,
    /// One x2APIC ICR write, TSC cycles (0: not measured).
    pub icr_cycles: u64,
    /// One x2APIC EOI write, TSC cycles (0: not measured).
    pub eoi_cycles: u64,
    /// One preempt_disable/enable pair, preempt-off tracer off, TSC cycles
    /// (0: not measured).
    pub preempt_pair_cycles: u64,
    /// The same with the tracer on (0: not measured).
    pub preempt_pair_traced_cycles: u64,
    /// Per-vCPU counters.
    pub vcpus: Vec<VcpuCounters>,
    /// Latency probe per vCPU (TSC cycles late).
    pub probe_per_vcpu: Vec<Histogram>,
    /// All vCPUs' probes merged.
    pub probe: Histogram,
    /// Tasks created over the run.
    pub tasks_created: u64,
    /// Tasks exited and freed.
    pub tasks_freed: u64,
    /// Heap in use after the workload.
    pub heap_used: u64,
    /// Heap in use before it.
    pub heap_baseline: u64,
    /// Create/exit pairs of the churn workload.
    pub churn_cycles: u64,
    /// Progress of the hog tasks (only those that ran).
    pub hogs: Vec<TaskProgress>,
    /// Workload length as the guest measured it (cycles).
    pub workload_cycles: u64,
    /// Per-design results (ping, shootdown and torture workloads).
    pub designs: Vec<DesignReport>,
    /// Torture workload: (primitive name, invocations, failed checks), over
    /// all design phases; empty for other workloads.
    pub torture: Vec<(&'static str, u64, u64)>,
    /// Raw IPI round trip (floor and ping workloads; zero count otherwise).
    pub floor: abi::FloorResults,
}

fn verdict_text(v: u32) -> Result<&'static str, FieldError> {
    match v {
        verdict::UNKNOWN => Ok("not measured"),
        verdict::HARDWARE => Ok("hardware-accelerated"),
        verdict::CPL0_EMULATED => Ok("CPL0 emulated: absolute latencies are not representative"),
        other => Err(FieldError {
            field: "results.verdict",
            found: other.into(),
            expected: "a verdict code",
        }),
    }
}

/// The kernel mode the guest reports: the BSP's, and every vCPU's the same.
fn mode_text(r: &abi::Results, statuses: &[VcpuStatus]) -> Result<&'static str, FieldError> {
    let mode = r.mode;
    if !matches!(mode, guest_mode::PLAIN | guest_mode::PVM_NATIVE) {
        return Err(FieldError {
            field: "results.mode",
            found: mode.into(),
            expected: "plain (1) or pvm-native (2)",
        });
    }
    if let Some(s) = statuses.iter().find(|s| s.mode != mode) {
        return Err(FieldError {
            field: "vcpu.mode",
            found: s.mode.into(),
            expected: "the BSP's mode on every vCPU",
        });
    }
    Ok(guest_mode::name(mode))
}

fn native_error_text(code: u32) -> Result<Option<&'static str>, FieldError> {
    match code {
        native_error::NONE => Ok(None),
        native_error::NOT_DETECTED..=native_error::HYPERCALL_ABI => {
            Ok(Some(native_error::describe(code)))
        }
        other => Err(FieldError {
            field: "results.native_error",
            found: other.into(),
            expected: "a native_error code",
        }),
    }
}

/// Validates the guest kernel's figures.
pub fn guest_report(
    page: &SharedPage,
    per_vcpu: &[VcpuResults],
    vcpus: u32,
    designs: &[Design],
    phase_pv: impl Fn(usize) -> u32,
) -> Result<GuestReport, FieldError> {
    let r = &page.results;
    let statuses = vcpu_statuses(page, vcpus)?;
    let mut probe = Histogram::new();
    let mut probe_per_vcpu = Vec::with_capacity(per_vcpu.len());
    for v in per_vcpu.iter().take(vcpus as usize) {
        v.probe.validate("vcpu_results[].probe")?;
        probe.merge(&v.probe);
        probe_per_vcpu.push(v.probe);
    }
    if r.workload_end_tsc < r.workload_start_tsc {
        return Err(FieldError {
            field: "results.workload_end_tsc",
            found: r.workload_end_tsc,
            expected: ">= start",
        });
    }
    r.floor.validate()?;
    if r.tasks_freed > r.tasks_created {
        return Err(FieldError {
            field: "results.tasks_freed",
            found: r.tasks_freed,
            expected: "<= tasks_created",
        });
    }
    Ok(GuestReport {
        cpl0_cycles_per_kiter: r.cpl0_cycles_per_kiter,
        cpl3_cycles_per_kiter: r.cpl3_cycles_per_kiter,
        verdict: verdict_text(r.verdict)?,
        tick_hz: r.tick_hz,
        mode: mode_text(r, &statuses)?,
        native_error: native_error_text(r.native_error)?,
        trap_cycles: r.trap_cycles,
        icr_cycles: r.icr_cycles,
        eoi_cycles: r.eoi_cycles,
        preempt_pair_cycles: r.preempt_pair_cycles,
        preempt_pair_traced_cycles: r.preempt_pair_traced_cycles,
        vcpus: statuses
            .iter()
            .map(|s| VcpuCounters {
                context_switches: s.context_switches,
                preemptions: s.preemptions,
                migrations_in: s.migrations_in,
                ticks: s.ticks,
                ipis_sent: s.ipis_sent,
                ipis_received: s.ipis_received,
                hotplug: VcpuHotplugCounts {
                    offlines: s.hotplug.offlines,
                    onlines: s.hotplug.onlines,
                    ipis_offline: s.hotplug.ipis_offline,
                    tasks_moved: s.hotplug.tasks_moved,
                    switches_since_online: s.hotplug.switches_since_online,
                    offline_cycles: s.hotplug.offline_cycles,
                },
            })
            .collect(),
        probe_per_vcpu,
        probe,
        tasks_created: r.tasks_created,
        tasks_freed: r.tasks_freed,
        heap_used: r.heap_used,
        heap_baseline: r.heap_baseline,
        churn_cycles: r.churn_cycles,
        hogs: r
            .hogs
            .iter()
            .copied()
            .filter(|h| h.iterations > 0)
            .collect(),
        workload_cycles: r.workload_end_tsc - r.workload_start_tsc,
        torture: if r.torture.iter().any(|t| t.invocations > 0) {
            abi::torture::NAMES
                .iter()
                .zip(r.torture.iter())
                .map(|(n, t)| (*n, t.invocations, t.errors))
                .collect()
        } else {
            Vec::new()
        },
        designs: designs
            .iter()
            .enumerate()
            .map(|(i, &d)| design_report(&page.designs[i], d, phase_pv(i) & abi::pv::ALL, i, vcpus))
            .collect::<Result<_, _>>()?,
        floor: r.floor,
    })
}

/// Validates a finished boot's results and summarises them.
pub fn boot_report(
    config: &MachineConfig,
    page: &SharedPage,
    per_vcpu: &[VcpuResults],
    tsc_khz: u64,
    boot_time: Option<Duration>,
) -> Result<BootReport, FailureKind> {
    let r = &page.results;
    r.validate(config.vcpus)
        .map_err(FailureKind::InvalidResults)?;
    vcpu_statuses(page, config.vcpus).map_err(FailureKind::InvalidResults)?;
    let missing = offline_vcpus(page, config.vcpus, 16);
    if r.nr_online != config.vcpus || !missing.is_empty() {
        return Err(FailureKind::NotAllOnline {
            online: r.nr_online,
            vcpus: config.vcpus,
            missing,
        });
    }
    Ok(BootReport {
        vcpus: config.vcpus,
        online: r.nr_online,
        // The AllOnline mark is required before Done; a guest that skipped
        // it is reported as not all online above only if counts disagree,
        // so fall back to zero rather than invent a time.
        boot_time: boot_time.unwrap_or_default(),
        tsc_khz,
        guest_boot_cycles: r.all_online_tsc - r.boot_tsc,
        console_tail: Vec::new(),
        guest: guest_report(page, per_vcpu, config.vcpus, &config.ran_designs(), |i| {
            config.phase_pv(i)
        })
        .map_err(FailureKind::InvalidResults)?,
        host: Default::default(),
        vmm_stalls: Default::default(),
        pv_probe: None,
        pv_host: None,
    })
}

/// The status entries of the first `vcpus` vCPUs, each checked.
pub fn vcpu_statuses(page: &SharedPage, vcpus: u32) -> Result<Vec<VcpuStatus>, FieldError> {
    let statuses = page.vcpus.get(..vcpus as usize).ok_or(FieldError {
        field: "control.nr_vcpus",
        found: vcpus.into(),
        expected: "at most MAX_VCPUS",
    })?;
    statuses.iter().try_for_each(VcpuStatus::validate)?;
    Ok(statuses.to_vec())
}

/// Parses a shared page from raw bytes (for fuzzing and tests).
pub fn parse_page(bytes: &[u8]) -> Option<Box<SharedPage>> {
    crate::memory::boxed_from_bytes(bytes)
}

/// Reads guest-written bytes as the VMM does at the end of a run: the
/// shared page (`page`, at least `size_of::<SharedPage>()` bytes) and the
/// per-vCPU results (`per_vcpu`, one [`VcpuResults`] per vCPU), validated
/// by [`boot_report`] for a guest of `vcpus` vCPUs. Never panics; every
/// allocation is bounded by `vcpus` (capped at [`abi::MAX_VCPUS`]) and the
/// fixed sizes of the records. The fuzz target and the property tests
/// drive this function.
pub fn parse_and_validate(
    page: &[u8],
    per_vcpu: &[u8],
    vcpus: u32,
) -> Result<BootReport, FailureKind> {
    let bad = |field, found: usize, expected| {
        FailureKind::InvalidResults(FieldError {
            field,
            found: found as u64,
            expected,
        })
    };
    let page = parse_page(page).ok_or(bad(
        "shared page",
        page.len(),
        "size_of::<SharedPage>() bytes",
    ))?;
    let n = (vcpus as usize).min(abi::MAX_VCPUS);
    let size = std::mem::size_of::<VcpuResults>();
    if per_vcpu.len() / size < n {
        return Err(bad(
            "vcpu_results",
            per_vcpu.len() / size,
            "one entry per vCPU",
        ));
    }
    let per: Vec<VcpuResults> = per_vcpu
        .chunks_exact(size)
        .take(n)
        .filter_map(VcpuResults::read_from)
        .collect();
    // Validate the design slots too, as a shootdown run of every design
    // would (the first slots name the designs in code order).
    let mut config = MachineConfig::new(vcpus);
    config.workload = abi::Workload::Shootdown;
    config.designs = Design::ALL
        .iter()
        .copied()
        .take_while(|d| page.designs[*d as usize].valid != 0)
        .collect();
    boot_report(&config, &page, &per, 0, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::{vcpu_state, ABI_VERSION, RESULTS_MAGIC};

    fn good_page(vcpus: u32) -> Box<SharedPage> {
        let mut page = crate::memory::boxed_zeroed::<SharedPage>();
        page.results.magic = RESULTS_MAGIC;
        page.results.abi_version = ABI_VERSION;
        page.results.nr_online = vcpus;
        page.results.boot_tsc = 100;
        page.results.all_online_tsc = 350;
        page.results.mode = abi::guest_mode::PLAIN;
        for v in &mut page.vcpus[..vcpus as usize] {
            v.state = vcpu_state::ONLINE;
            v.mode = abi::guest_mode::PLAIN;
        }
        page
    }

    #[test]
    fn test_boot_report_accepts_good_page() {
        let r = boot_report(
            &MachineConfig::new(4),
            &good_page(4),
            &[],
            1000,
            Some(Duration::from_millis(3)),
        )
        .unwrap();
        assert_eq!((r.online, r.guest_boot_cycles), (4, 250));
    }

    /// A design slot with a consistent preempt-off record for 2 vCPUs.
    fn traced_design() -> DesignResults {
        let mut d = DesignResults::zeroed();
        d.valid = 1;
        d.design = Design::Upstream as u32;
        let p = &mut d.preempt_off;
        p.enabled = 1;
        p.window_cycles = 100;
        p.window_max = Histogram::new();
        for (cpu, values) in [[10u64, 20], [30, 4000]].iter().enumerate() {
            let mut h = Histogram::new();
            for &v in values {
                h.record(v);
                p.window_max.record(v);
            }
            p.per_cpu[cpu] = abi::PreemptOffCpu::from_histogram(&h);
        }
        p.causes[abi::preempt_off::cause::CSD_LOCK_WAIT] = abi::PreemptOffCause {
            windows: 2,
            max: 4000,
        };
        d.phase_end.status = abi::phase_status::QUIESCED;
        d
    }

    #[test]
    fn test_preempt_off_record_is_validated() {
        let report = |d: &DesignResults| design_report(d, Design::Upstream, 0, 0, 2);
        let good = report(&traced_design()).unwrap();
        assert_eq!(good.preempt_off.per_cpu.len(), 2);
        assert_eq!(good.preempt_off.p99_ns(1_000_000), Some(4000));
        let mut d = traced_design();
        d.preempt_off.per_cpu[1].p50 = 5000; // above its p99
        assert_eq!(
            report(&d).unwrap_err().field,
            "designs[].preempt_off.per_cpu"
        );
        let mut d = traced_design();
        d.preempt_off.per_cpu[0].windows = 7; // does not add up
        assert_eq!(
            report(&d).unwrap_err().field,
            "designs[].preempt_off.window_max"
        );
        let mut d = traced_design();
        d.preempt_off.causes[0].windows = 9; // more than the windows
        assert_eq!(
            report(&d).unwrap_err().field,
            "designs[].preempt_off.causes"
        );
        let mut d = traced_design();
        d.preempt_off.enabled = 0;
        assert_eq!(report(&d).unwrap().preempt_off.p99_ns(1000), None);
    }

    #[test]
    fn test_boot_report_rejects_bad_magic() {
        let mut page = good_page(4);
        page.results.magic = 0xbad_c0de;
        let err = boot_report(&MachineConfig::new(4), &page, &[], 0, None).unwrap_err();
        assert!(
            err.to_string().contains("results.magic = 0xbadc0de"),
            "{err}"
        );
    }

    #[test]
    fn test_mode_and_native_error_are_validated() {
        let mut r = good_page(2).results;
        let mut statuses = good_page(2).vcpus[..2].to_vec();
        assert_eq!(mode_text(&r, &statuses).unwrap(), "plain");
        r.mode = abi::guest_mode::PVM_NATIVE;
        let e = mode_text(&r, &statuses).unwrap_err();
        assert_eq!(e.field, "vcpu.mode", "one vCPU in another mode: {e}");
        statuses
            .iter_mut()
            .for_each(|s| s.mode = abi::guest_mode::PVM_NATIVE);
        assert_eq!(mode_text(&r, &statuses).unwrap(), "pvm-native");
        r.mode = 7;
        assert_eq!(mode_text(&r, &statuses).unwrap_err().field, "results.mode");
        assert_eq!(native_error_text(0).unwrap(), None);
        assert!(native_error_text(abi::native_error::HYPERCALL_ABI)
            .unwrap()
            .is_some());
        assert_eq!(
            native_error_text(99).unwrap_err().field,
            "results.native_error"
        );
    }

    #[test]
    fn test_boot_report_rejects_out_of_range_count() {
        let mut page = good_page(4);
        page.results.nr_online = 1_000_000;
        let err = boot_report(&MachineConfig::new(4), &page, &[], 0, None).unwrap_err();
        assert!(err.to_string().contains("results.nr_online"), "{err}");
    }

    #[test]
    fn test_boot_report_names_missing_vcpus() {
        let mut page = good_page(4);
        page.vcpus[2].state = vcpu_state::OFFLINE;
        page.results.nr_online = 3;
        let err = boot_report(&MachineConfig::new(4), &page, &[], 0, None).unwrap_err();
        assert_eq!(
            err,
            FailureKind::NotAllOnline {
                online: 3,
                vcpus: 4,
                missing: vec![2]
            }
        );
    }

    #[test]
    fn test_boot_report_rejects_garbage_state() {
        let mut page = good_page(4);
        page.vcpus[1].state = 0xdead;
        let err = boot_report(&MachineConfig::new(4), &page, &[], 0, None).unwrap_err();
        assert!(err.to_string().contains("vcpus[].state"), "{err}");
    }

    #[test]
    fn test_panic_details_bounded_and_lossy() {
        let mut page = good_page(1);
        page.results.panic.state = panic_state::COMPLETE;
        page.results.panic.file_len = 9999;
        page.results.panic.message_len = 2;
        page.results.panic.message[..2].copy_from_slice(&[0xff, b'x']);
        let FailureKind::Panic(Some(p)) = explain(FailureKind::Panic(None), &page) else {
            panic!()
        };
        assert_eq!(p.file.len(), 128);
        assert_eq!(p.message, "\u{fffd}x");
    }

    #[test]
    fn test_explain_panic_interrupted_by_emulation_failure() {
        let mut page = good_page(2);
        page.results.panic.state = panic_state::LOCATION;
        page.results.panic.vcpu = 1;
        page.results.panic.line = 42;
        let fault = VcpuFault::InternalError {
            suberror: 1,
            data: vec![],
        };
        let kind = explain(
            FailureKind::Fault {
                vcpu: 1,
                fault: fault.clone(),
            },
            &page,
        );
        let FailureKind::Panic(Some(p)) = kind else {
            panic!("{kind:?}")
        };
        assert_eq!((p.vcpu, p.line), (1, 42));
        assert!(p.message.contains("emulation failure"), "{}", p.message);
        // Another vCPU's internal error is not that panic.
        let kind = explain(FailureKind::Fault { vcpu: 0, fault }, &page);
        assert!(matches!(kind, FailureKind::Fault { vcpu: 0, .. }));
    }

    #[test]
    fn test_parse_page_any_bytes() {
        assert!(parse_page(&[0u8; 10]).is_none());
        let bytes = vec![0xa5u8; std::mem::size_of::<SharedPage>()];
        let page = parse_page(&bytes).unwrap();
        assert!(boot_report(&MachineConfig::new(4), &page, &[], 0, None).is_err());
    }
}
