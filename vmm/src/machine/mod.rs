//! One guest run, end to end: build the VM, start the vCPU threads, wait
//! for the guest under a watchdog, stop every thread, read and validate the
//! results.
//!
//! - `config.rs`: [`MachineConfig`], what a run needs to know.
//! - `create.rs`: `Machine::create`, the machine built in named steps.
//! - `run.rs`: the controller's wait under the watchdog, and the stop.
//! - here: [`boot`], which runs them in turn and reads the results out.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::console::Console;
use crate::inject::{self, HostReport, Injector};
use crate::pv::{HostPv, PvHost};
pub use crate::results::BootReport;
use crate::results::{self, FailureKind, GuestFailure, WatchdogReport};
use crate::vcpu::{RegisterDump, RunControl, VcpuEvent, VcpuHandle};
use crate::{memory, Error};

mod config;
mod create;
mod run;

pub use config::{ColumnError, MachineConfig, DEFAULT_DURATION, DEFAULT_KVM_PATH};
use run::Wait;

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

impl Machine {
    /// The guest failure `kind`, with the vCPUs' registers and the console tail.
    fn failure(&self, kind: FailureKind, dumps: Vec<RegisterDump>) -> Error {
        Error::Guest(Box::new(GuestFailure {
            kind,
            dumps,
            console_tail: self.console.tail(),
        }))
    }
}
