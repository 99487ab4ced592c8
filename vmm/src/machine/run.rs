//! The run of a created machine: the controller's wait for the guest's
//! verdict under the watchdog, and the stop of every thread.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use abi::GuestStatus;

use super::Machine;
use crate::inject;
use crate::results::FailureKind;
use crate::vcpu::{RegisterDump, VcpuEvent};

/// How often the controller looks for a SIGINT/SIGTERM while it waits.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// How long stopped vCPU threads get to leave KVM_RUN after a kick.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How the controller's wait ended.
pub(super) enum Wait {
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

impl Machine {
    /// Waits for the guest's verdict until the watchdog deadline.
    pub(super) fn wait(&mut self, timeout: Duration) -> Wait {
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
    pub(super) fn stop(&mut self) -> Vec<RegisterDump> {
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
}
