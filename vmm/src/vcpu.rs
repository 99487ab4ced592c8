//! vCPU threads: one named thread per vCPU runs `KVM_RUN` in a loop,
//! handles the exits the guest causes, and reports to the controller over a
//! channel. The controller stops a thread by kicking it (see [`Kicker`]).

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use abi::{GuestStatus, Port};
use kvm_bindings::{kvm_regs, kvm_sregs, KVM_INTERNAL_ERROR_EMULATION};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::console::Console;
use crate::pv::PvHost;

/// Stack of a vCPU thread: it only runs the exit handlers.
const VCPU_THREAD_STACK: usize = 256 << 10;

/// The real-time signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivering the signal is what interrupts KVM_RUN.
}

/// Installs the (empty) kick handler once per process. Without a handler
/// the default action of a real-time signal would kill the process.
pub(crate) fn install_kick_handler() -> std::io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

/// Pointer to a vCPU's `kvm_run.immediate_exit`, null once the vCPU fd (and
/// with it the `kvm_run` mapping) is gone.
struct ImmediateExit(*mut u8);

// SAFETY: the pointer is only dereferenced while holding the `Kicker`
// mutex, and only while non-null, i.e. while the owning vCPU thread keeps
// the mapping alive (it nulls the pointer under the same mutex first).
unsafe impl Send for ImmediateExit {}

/// Kicks one vCPU thread out of `KVM_RUN`, race-free, the way Firecracker
/// does: set `kvm_run.immediate_exit`, fence, then signal the thread. If the
/// signal lands while the thread runs guest code (or halts in KVM), KVM_RUN
/// returns `EINTR`; if it lands just before the thread re-enters KVM_RUN,
/// `immediate_exit` makes that KVM_RUN return `EINTR` at once.
///
/// It also carries the host-side pause of the vCPU (injection mode
/// `pause`): [`Kicker::pause_for`] kicks the thread and makes it hold
/// outside KVM_RUN until a deadline, and the thread's kernel id.
pub struct Kicker {
    immediate_exit: Mutex<ImmediateExit>,
    thread: OnceLock<libc::pthread_t>,
    /// Kernel thread id of the vCPU thread (0 until it has started).
    tid: AtomicI32,
    /// Hold the thread outside KVM_RUN until then (`None`: run).
    pause_until: Mutex<Option<Instant>>,
    pause_wake: Condvar,
    paused_ns: AtomicU64,
    pauses: AtomicU64,
}

impl Kicker {
    pub(crate) fn new(fd: &mut VcpuFd) -> Self {
        let run = fd.get_kvm_run();
        Kicker {
            immediate_exit: Mutex::new(ImmediateExit(std::ptr::addr_of_mut!(run.immediate_exit))),
            thread: OnceLock::new(),
            tid: AtomicI32::new(0),
            pause_until: Mutex::new(None),
            pause_wake: Condvar::new(),
            paused_ns: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
        }
    }

    /// The vCPU thread's kernel thread id, once it has started.
    pub fn tid(&self) -> Option<libc::pid_t> {
        Some(self.tid.load(Ordering::Acquire)).filter(|&t| t != 0)
    }

    /// Holds the vCPU thread outside KVM_RUN for `len` from now: kicks it
    /// out and makes it wait before re-entering. A pause already pending is
    /// extended, never shortened. The guest sees the gap in its TSC, but KVM
    /// neither sets the steal-time `preempted` flag nor counts steal time
    /// for it: the thread left KVM_RUN and sleeps, it is not runnable.
    pub fn pause_for(&self, len: Duration) {
        let until = Instant::now() + len;
        {
            let mut guard = self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
            *guard = Some(guard.map_or(until, |u| u.max(until)));
        }
        self.kick();
    }

    /// Cancels any pending pause and wakes a held thread (used on stop, so
    /// that shutdown and the watchdog are never delayed by a pause).
    pub fn release(&self) {
        *self.pause_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.pause_wake.notify_all();
    }

    /// Whether a pause is pending (the thread will hold at its next kick).
    pub(crate) fn pause_pending(&self) -> bool {
        self.pause_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// A directed yield to this vCPU (PV yield-to): ends a pending or
    /// running pause now. Returns how much of it was left (`None`: there
    /// was no pause).
    pub fn end_pause_early(&self) -> Option<Duration> {
        let until = self
            .pause_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        self.pause_wake.notify_all();
        Some(until.saturating_duration_since(Instant::now()))
    }

    /// Pauses the thread served (count) and the time it was held.
    pub fn pause_totals(&self) -> (u64, Duration) {
        (
            self.pauses.load(Ordering::Relaxed),
            Duration::from_nanos(self.paused_ns.load(Ordering::Relaxed)),
        )
    }

    /// On the vCPU thread after a kick: waits while a pause is pending
    /// (returns at once if `stop` is set or [`Kicker::release`] is called).
    fn hold(&self, stop: &AtomicBool) {
        let mut guard = self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        let Some(_) = *guard else { return };
        let start = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                *guard = None;
                break;
            }
            let Some(until) = *guard else { break };
            let now = Instant::now();
            if now >= until {
                *guard = None;
                break;
            }
            // Bounded waits: `stop` is re-checked even without a release.
            let wait = (until - now).min(Duration::from_millis(20));
            guard = self
                .pause_wake
                .wait_timeout(guard, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(guard);
        self.pauses.fetch_add(1, Ordering::Relaxed);
        self.paused_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn store(&self, value: u8) {
        let guard = self
            .immediate_exit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !guard.0.is_null() {
            // SAFETY: non-null means the vCPU fd and its kvm_run mapping are
            // alive (see ImmediateExit); the byte is shared with the kernel
            // and with the vCPU thread, so it is only accessed atomically.
            unsafe { AtomicU8::from_ptr(guard.0) }.store(value, Ordering::SeqCst);
        }
    }

    /// Forces the vCPU thread out of `KVM_RUN` (now, or at its next entry).
    pub fn kick(&self) {
        self.store(1);
        // The flag must be visible before the signal can be handled.
        fence(Ordering::SeqCst);
        if let Some(&thread) = self.thread.get() {
            // SAFETY: `thread` is a live, not yet joined thread of this
            // process (the handle is joined only after the last kick), and
            // the signal has a handler (install_kick_handler).
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    /// Records the thread to signal (once).
    pub(crate) fn set_thread<T>(&self, thread: &JoinHandle<T>) {
        let _ = self
            .thread
            .set(std::os::unix::thread::JoinHandleExt::as_pthread_t(thread));
    }

    /// Nulls the pointer: called by the vCPU thread before its fd drops.
    pub(crate) fn detach(&self) {
        self.immediate_exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0 = std::ptr::null_mut();
    }
}

/// Why a vCPU cannot go on: the guest did something outside the contract,
/// or KVM failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuFault {
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR, most often an instruction KVM's emulator
    /// does not implement.
    InternalError {
        /// KVM_INTERNAL_ERROR_* code.
        suberror: u32,
        /// Extra data KVM supplied (instruction bytes, exit reasons).
        data: Vec<u64>,
    },
    /// VM entry failed.
    FailEntry(u64),
    /// An access to a port that is not in [`abi::Port`].
    UnknownPort {
        /// Port number.
        port: u16,
        /// `out` (true) or `in`.
        write: bool,
    },
    /// A status port write of the wrong size or an unknown code.
    BadStatus(Vec<u8>),
    /// A console-buffer write the VMM refused (size, length).
    BadConsole(String),
    /// A PV hypercall the VMM refused (see [`crate::pv::HypercallError`]).
    BadHypercall(String),
    /// An access to unbacked guest-physical memory.
    Mmio(u64),
    /// Any other exit the guest should never cause.
    UnexpectedExit(String),
    /// `KVM_RUN` itself failed.
    Ioctl(i32),
}

impl fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuFault::Shutdown => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)"),
            VcpuFault::InternalError {
                suberror: KVM_INTERNAL_ERROR_EMULATION,
                data,
            } => write!(
                f,
                "emulation failure (KVM_EXIT_INTERNAL_ERROR): KVM's instruction emulator cannot execute the \
                 instruction at RIP (hosts that emulate guest kernel code, such as nested ones, support only a \
                 subset of x86; SSE beyond plain moves is the usual culprit); data {data:x?}"
            ),
            VcpuFault::InternalError { suberror, data } => {
                write!(
                    f,
                    "KVM internal error (KVM_EXIT_INTERNAL_ERROR), suberror {suberror}, data {data:x?}"
                )
            }
            VcpuFault::FailEntry(r) => write!(f, "VM entry failed, hardware reason {r:#x}"),
            VcpuFault::UnknownPort { port, write } => {
                write!(
                    f,
                    "{} of unknown I/O port {port:#x}",
                    if *write { "write" } else { "read" }
                )
            }
            VcpuFault::BadStatus(data) => write!(f, "bad write to the status port: {data:02x?}"),
            VcpuFault::BadConsole(why) => write!(f, "bad write to the console-buffer port: {why}"),
            VcpuFault::BadHypercall(why) => write!(f, "bad PV hypercall: {why}"),
            VcpuFault::Mmio(addr) => write!(f, "access to unbacked guest-physical address {addr:#x}"),
            VcpuFault::UnexpectedExit(e) => write!(f, "unexpected exit {e}"),
            VcpuFault::Ioctl(errno) => {
                write!(f, "KVM_RUN failed: {}", std::io::Error::from_raw_os_error(*errno))
            }
        }
    }
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// Tell the controller, then re-enter.
    Report(GuestStatus),
    /// A design phase started or ended (a trace marker), then re-enter.
    Phase {
        /// The design slot.
        slot: u32,
        /// It ended (else started).
        end: bool,
    },
    /// Stop this vCPU.
    Fault(VcpuFault),
}

/// Decides what one exit means. A free function so it can be tested with
/// made-up exits. `pv` serves the PV hypercall port (None: the run has
/// no PV interface, and the port is unknown).
pub fn handle_exit(
    exit: VcpuExit<'_>,
    vcpu: u32,
    console: &Console,
    pv: Option<&PvHost>,
) -> ExitAction {
    match exit {
        VcpuExit::IoOut(port, data) => handle_out(port, data, vcpu, console),
        VcpuExit::IoIn(port, data) if port == Port::Hypercall as u16 && data.len() == 4 => {
            match pv.map(|pv| pv.hypercall(vcpu)) {
                Some(Ok(ret)) => {
                    data.copy_from_slice(&ret.to_le_bytes());
                    ExitAction::Continue
                }
                Some(Err(e)) => ExitAction::Fault(VcpuFault::BadHypercall(e.to_string())),
                None => ExitAction::Fault(VcpuFault::UnknownPort { port, write: false }),
            }
        }
        VcpuExit::IoIn(port, _) => ExitAction::Fault(VcpuFault::UnknownPort { port, write: false }),
        // With the in-kernel irqchip HLT blocks in KVM; an exit here is harmless.
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::Fault(VcpuFault::Shutdown),
        // The details live in kvm_run; the run loop fills them in.
        VcpuExit::InternalError => ExitAction::Fault(VcpuFault::InternalError {
            suberror: 0,
            data: Vec::new(),
        }),
        VcpuExit::FailEntry(reason, _) => ExitAction::Fault(VcpuFault::FailEntry(reason)),
        VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _) => {
            ExitAction::Fault(VcpuFault::Mmio(addr))
        }
        other => ExitAction::Fault(VcpuFault::UnexpectedExit(format!("{other:?}"))),
    }
}

fn handle_out(port: u16, data: &[u8], vcpu: u32, console: &Console) -> ExitAction {
    match Port::try_from(port) {
        Ok(Port::Console) => {
            console.write(vcpu, data);
            ExitAction::Continue
        }
        Ok(Port::Status) => match <[u8; 4]>::try_from(data).map(u32::from_le_bytes) {
            Ok(code) => match GuestStatus::try_from(code) {
                Ok(status) => ExitAction::Report(status),
                Err(_) => ExitAction::Fault(VcpuFault::BadStatus(data.to_vec())),
            },
            Err(_) => ExitAction::Fault(VcpuFault::BadStatus(data.to_vec())),
        },
        Ok(Port::Phase) => match <[u8; 4]>::try_from(data).map(u32::from_le_bytes) {
            Ok(code) => ExitAction::Phase {
                slot: code & !abi::PHASE_END,
                end: code & abi::PHASE_END != 0,
            },
            Err(_) => ExitAction::Fault(VcpuFault::BadStatus(data.to_vec())),
        },
        Ok(Port::ConsoleBuffer) => match <[u8; 4]>::try_from(data).map(u32::from_le_bytes) {
            Ok(len) => match console.write_from_guest(vcpu, len) {
                Ok(()) => ExitAction::Continue,
                Err(why) => ExitAction::Fault(VcpuFault::BadConsole(why)),
            },
            Err(_) => ExitAction::Fault(VcpuFault::BadConsole(format!(
                "a {}-byte write (expected 4: the length)",
                data.len()
            ))),
        },
        // The hypercall port is read, never written.
        Ok(Port::Hypercall) => ExitAction::Fault(VcpuFault::UnknownPort { port, write: true }),
        Err(_) => ExitAction::Fault(VcpuFault::UnknownPort { port, write: true }),
    }
}

/// A vCPU's registers when its thread stopped.
#[derive(Debug, Clone)]
pub struct RegisterDump {
    /// vCPU index.
    pub vcpu: u32,
    /// General-purpose registers, if KVM returned them.
    pub regs: Option<kvm_regs>,
    /// Special registers, if KVM returned them.
    pub sregs: Option<kvm_sregs>,
    /// KVM_MP_STATE_* value.
    pub mp_state: Option<u32>,
    /// In the PVM host's native mode, the vCPU's virtual interrupt flag and
    /// its pending bit (VIF page bytes 0 and 1): the interrupt state KVM's
    /// registers do not show there.
    pub vif: Option<(u8, u8)>,
}

impl RegisterDump {
    fn capture(fd: &VcpuFd, vcpu: u32) -> Self {
        RegisterDump {
            vcpu,
            regs: fd.get_regs().ok(),
            sregs: fd.get_sregs().ok(),
            mp_state: fd.get_mp_state().ok().map(|m| m.mp_state),
            vif: None,
        }
    }
}

fn mp_state_name(state: u32) -> &'static str {
    match state {
        kvm_bindings::KVM_MP_STATE_RUNNABLE => "runnable",
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED => "uninitialized",
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => "init-received",
        kvm_bindings::KVM_MP_STATE_HALTED => "halted",
        kvm_bindings::KVM_MP_STATE_SIPI_RECEIVED => "sipi-received",
        _ => "other",
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vcpu {}:", self.vcpu)?;
        if let Some(m) = self.mp_state {
            write!(f, " mp_state={}", mp_state_name(m))?;
        }
        if let Some(r) = &self.regs {
            write!(
                f,
                " rip={:#x} rsp={:#x} rflags={:#x}",
                r.rip, r.rsp, r.rflags
            )?;
        }
        if let Some(s) = &self.sregs {
            write!(
                f,
                " cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            )?;
        }
        if let Some((if_, pending)) = self.vif {
            write!(f, " vif={if_}/{pending}")?;
        }
        if let Some(r) = &self.regs {
            write!(
                f,
                "\n    rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}\n    \
                 r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
                r.rax,
                r.rbx,
                r.rcx,
                r.rdx,
                r.rsi,
                r.rdi,
                r.rbp,
                r.r8,
                r.r9,
                r.r10,
                r.r11,
                r.r12,
                r.r13,
                r.r14,
                r.r15
            )?;
        }
        if self.regs.is_none() && self.sregs.is_none() {
            write!(f, " (registers unavailable)")?;
        }
        Ok(())
    }
}

/// Writes `dumps` for a human. Up to 16 vCPUs: all in full. Beyond: the
/// vCPUs named in `focus` and up to 16 that are not halted in full, the
/// rest grouped by RIP, one line per group (a 1024-vCPU guest stays
/// readable).
pub fn write_dumps(
    out: &mut dyn std::io::Write,
    dumps: &[RegisterDump],
    focus: &[u32],
) -> std::io::Result<()> {
    const FULL_LIMIT: usize = 16;
    let halted = |d: &RegisterDump| d.mp_state == Some(kvm_bindings::KVM_MP_STATE_HALTED);
    let mut full = 0;
    let mut groups: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for d in dumps {
        if dumps.len() <= FULL_LIMIT || focus.contains(&d.vcpu) || (!halted(d) && full < FULL_LIMIT)
        {
            writeln!(out, "  {d}")?;
            full += usize::from(!focus.contains(&d.vcpu));
        } else {
            groups
                .entry(d.regs.map_or(0, |r| r.rip))
                .or_default()
                .push(d.vcpu);
        }
    }
    for (rip, vcpus) in groups {
        writeln!(
            out,
            "  {} more vCPUs at rip={rip:#x} (first: {:?})",
            vcpus.len(),
            &vcpus[..vcpus.len().min(8)]
        )?;
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::ConsoleMode;

    fn console() -> Console {
        Console::new(2, ConsoleMode::Capture)
    }

    #[test]
    fn test_handle_exit_console_and_status() {
        let c = console();
        let text = *b"hi\n";
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, &text), 1, &c, None),
            ExitAction::Continue
        );
        assert_eq!(c.tail(), ["[vcpu 1] hi"]);
        let done = 2u32.to_le_bytes();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf4, &done), 0, &c, None),
            ExitAction::Report(GuestStatus::Done)
        );
    }

    #[test]
    fn test_handle_exit_rejects_bad_status() {
        let c = console();
        let short = [2u8];
        assert!(matches!(
            handle_exit(VcpuExit::IoOut(0xf4, &short), 0, &c, None),
            ExitAction::Fault(VcpuFault::BadStatus(_))
        ));
        let unknown = 99u32.to_le_bytes();
        assert!(matches!(
            handle_exit(VcpuExit::IoOut(0xf4, &unknown), 0, &c, None),
            ExitAction::Fault(VcpuFault::BadStatus(_))
        ));
    }

    #[test]
    fn test_handle_exit_faults() {
        let c = console();
        let mut b = [0u8; 1];
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &b), 0, &c, None),
            ExitAction::Fault(VcpuFault::UnknownPort {
                port: 0x80,
                write: true
            })
        );
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3f8, &mut b), 0, &c, None),
            ExitAction::Fault(VcpuFault::UnknownPort {
                port: 0x3f8,
                write: false
            })
        );
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, 0, &c, None),
            ExitAction::Fault(VcpuFault::Shutdown)
        );
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xfee0_0000, &mut b), 0, &c, None),
            ExitAction::Fault(VcpuFault::Mmio(0xfee0_0000))
        );
        assert_eq!(
            handle_exit(VcpuExit::Hlt, 0, &c, None),
            ExitAction::Continue
        );
    }

    #[test]
    fn test_write_dumps_groups_halted_vcpus() {
        let halted = |vcpu| RegisterDump {
            vcpu,
            regs: Some(kvm_regs {
                rip: 0x200512,
                ..Default::default()
            }),
            sregs: None,
            mp_state: Some(kvm_bindings::KVM_MP_STATE_HALTED),
            vif: None,
        };
        let dumps: Vec<_> = (0..100).map(halted).collect();
        let mut out = Vec::new();
        write_dumps(&mut out, &dumps, &[7]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.starts_with("  vcpu 7: mp_state=halted rip=0x200512"),
            "{text}"
        );
        assert!(text.contains("99 more vCPUs at rip=0x200512"), "{text}");
    }

    #[test]
    fn test_register_dump_display_without_registers() {
        let d = RegisterDump {
            vcpu: 3,
            regs: None,
            sregs: None,
            mp_state: Some(kvm_bindings::KVM_MP_STATE_HALTED),
            vif: None,
        };
        assert_eq!(
            d.to_string(),
            "vcpu 3: mp_state=halted (registers unavailable)"
        );
        let native = RegisterDump {
            vif: Some((1, 0)),
            ..d
        };
        assert!(native.to_string().contains(" vif=1/0"), "{native}");
    }
}
