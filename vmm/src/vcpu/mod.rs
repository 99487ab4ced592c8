//! vCPU threads: one named thread per vCPU runs `KVM_RUN` in a loop,
//! handles the exits the guest causes, and reports to the controller over a
//! channel. The controller stops a thread by kicking it (see [`Kicker`]).
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the thread: spawn, the run loop, the events it sends |
//! | `kick.rs` | kicking a thread out of `KVM_RUN`, and host-side pauses |
//! | `exit.rs` | what one exit means (ports, faults) |
//! | `dump.rs` | register dumps for failure reports |

mod dump;
mod exit;
mod kick;

pub use dump::{write_dumps, RegisterDump};
pub use exit::{handle_exit, ExitAction, VcpuFault};
pub(crate) use kick::install_kick_handler;
pub use kick::Kicker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use abi::GuestStatus;
use kvm_ioctls::VcpuFd;

use crate::console::Console;
use crate::pv::PvHost;

/// Stack of a vCPU thread: it only runs the exit handlers.
const VCPU_THREAD_STACK: usize = 256 << 10;

/// What a vCPU thread tells the controller.
#[derive(Debug)]
pub enum VcpuEvent {
    /// The guest wrote a status code.
    Status {
        /// Which vCPU wrote it.
        vcpu: u32,
        /// The code.
        status: GuestStatus,
        /// When the exit was handled.
        at: Instant,
    },
    /// The guest marked a design phase's start or end.
    Phase {
        /// The design slot.
        slot: u32,
        /// It ended (else started).
        end: bool,
        /// When the exit was handled.
        at: Instant,
    },
    /// The vCPU stopped on a fault.
    Fault {
        /// Which vCPU.
        vcpu: u32,
        /// Why.
        fault: VcpuFault,
    },
    /// The thread left its run loop (always the last event of a thread).
    Exited(Box<RegisterDump>),
}

/// Flags the controller sets for all vCPU threads.
#[derive(Default)]
pub struct RunControl {
    /// Leave the run loop at the next opportunity (after a kick).
    pub stop: AtomicBool,
    /// APs wait here before their first KVM_RUN until the BSP reports
    /// `StartAps` (or the run stops), so they never spin in the guest.
    aps_released: Mutex<bool>,
    aps_gate: std::sync::Condvar,
}

impl RunControl {
    /// Lets the APs enter the guest.
    pub fn release_aps(&self) {
        *self.aps_released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.aps_gate.notify_all();
    }

    /// Blocks until the APs are released; false if the run stopped first.
    fn wait_for_release(&self) -> bool {
        let mut released = self.aps_released.lock().unwrap_or_else(|p| p.into_inner());
        while !*released && !self.stop.load(Ordering::SeqCst) {
            released = self
                .aps_gate
                .wait(released)
                .unwrap_or_else(|p| p.into_inner());
        }
        !self.stop.load(Ordering::SeqCst)
    }

    /// Sets `stop` and wakes APs still waiting at the gate.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _guard = self.aps_released.lock().unwrap_or_else(|p| p.into_inner());
        self.aps_gate.notify_all();
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    /// vCPU index.
    pub index: u32,
    /// Kicks the thread out of KVM_RUN.
    pub kicker: Arc<Kicker>,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// Whether the thread has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread (it must have sent [`VcpuEvent::Exited`]).
    pub fn join(self) {
        // A vCPU thread never panics on purpose; if it did, the panic has
        // been printed already and there is nothing left to clean up.
        let _ = self.thread.join();
    }
}

/// Starts vCPU `index` on its own thread; with `pin`, the thread pins
/// itself to that host CPU before its first KVM_RUN.
pub fn spawn(
    index: u32,
    mut fd: VcpuFd,
    console: Arc<Console>,
    control: Arc<RunControl>,
    events: Sender<VcpuEvent>,
    pin: Option<usize>,
    pv: Option<Arc<PvHost>>,
) -> std::io::Result<VcpuHandle> {
    install_kick_handler()?;
    let kicker = Arc::new(Kicker::new(&mut fd));
    let thread_kicker = kicker.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu-{index}"))
        .stack_size(VCPU_THREAD_STACK)
        .spawn(move || {
            thread_kicker
                .tid
                .store(crate::inject::placement::gettid(), Ordering::Release);
            if let Some(cpu) = pin {
                if let Err(e) = crate::inject::placement::set_affinity(0, &[cpu]) {
                    eprintln!("ipivirt: cannot pin vCPU {index} to host CPU {cpu}: {e}");
                }
            }
            run_loop(index, fd, &thread_kicker, &console, &control, &events, pv)
        })?;
    kicker.set_thread(&thread);
    Ok(VcpuHandle {
        index,
        kicker,
        thread,
    })
}

/// Whether work deferred to this (stopped) vCPU will run first when it
/// resumes: interrupts were enabled, and no event was in the middle of
/// being injected (KVM would deliver that one first on re-entry, and its
/// handler would run before FLUSH_DEFER's).
fn deferrable(fd: &mut VcpuFd, irqs_enabled: Option<bool>) -> bool {
    if !irqs_enabled.unwrap_or(fd.get_kvm_run().if_flag != 0) {
        return false;
    }
    match fd.get_vcpu_events() {
        Ok(ev) => ev.interrupt.injected == 0 && ev.exception.injected == 0 && ev.nmi.injected == 0,
        Err(_) => false,
    }
}

/// `kvm_run.internal` after a KVM_EXIT_INTERNAL_ERROR.
fn internal_error_details(fd: &mut VcpuFd) -> (u32, Vec<u64>) {
    let run = fd.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which KVM
    // fills the `internal` member of the exit union.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    (internal.suberror, internal.data[..n].to_vec())
}

fn run_loop(
    index: u32,
    mut fd: VcpuFd,
    kicker: &Kicker,
    console: &Console,
    control: &RunControl,
    events: &Sender<VcpuEvent>,
    pv: Option<Arc<PvHost>>,
) {
    // Send errors mean the controller is gone; the thread just ends.
    let released = index == 0 || control.wait_for_release();
    while released && !control.stop.load(Ordering::SeqCst) {
        match fd.run() {
            Ok(exit) => match handle_exit(exit, index, console, pv.as_deref()) {
                ExitAction::Continue => {}
                ExitAction::Report(status) => {
                    let _ = events.send(VcpuEvent::Status {
                        vcpu: index,
                        status,
                        at: Instant::now(),
                    });
                }
                ExitAction::Phase { slot, end } => {
                    let _ = events.send(VcpuEvent::Phase {
                        slot,
                        end,
                        at: Instant::now(),
                    });
                }
                ExitAction::Fault(mut fault) => {
                    if let VcpuFault::InternalError { suberror, data } = &mut fault {
                        (*suberror, *data) = internal_error_details(&mut fd);
                    }
                    let _ = events.send(VcpuEvent::Fault { vcpu: index, fault });
                    break;
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked: re-arm before looking at the stop flag again
                // (a kick after this store sets the flag to 1 anew).
                kicker.store(0);
                // A host-side pause (injection): hold outside KVM_RUN,
                // published in the PV state while held. Deferrable if the
                // guest had interrupts on: then the FLUSH_DEFER vector the
                // resume may bring is the first thing it runs.
                if let Some(pv) = pv.as_deref().filter(|_| kicker.pause_pending()) {
                    pv.begin_preemption(index, deferrable(&mut fd, pv.irqs_enabled(index)));
                    kicker.hold(&control.stop);
                    if let Err(e) = pv.end_preemption(index) {
                        let _ = events.send(VcpuEvent::Fault {
                            vcpu: index,
                            fault: VcpuFault::BadHypercall(e.to_string()),
                        });
                        break;
                    }
                } else {
                    kicker.hold(&control.stop);
                }
            }
            Err(e) => {
                let _ = events.send(VcpuEvent::Fault {
                    vcpu: index,
                    fault: VcpuFault::Ioctl(e.errno()),
                });
                break;
            }
        }
    }
    let dump = RegisterDump::capture(&fd, index);
    kicker.detach();
    drop(fd);
    let _ = events.send(VcpuEvent::Exited(Box::new(dump)));
}
