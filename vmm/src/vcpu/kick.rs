//! Kicking a vCPU thread out of `KVM_RUN` (race-free), and the host-side
//! pause of injection mode `pause`.

use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

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
    pub(super) tid: AtomicI32,
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
    pub(super) fn hold(&self, stop: &AtomicBool) {
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

    pub(super) fn store(&self, value: u8) {
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
