//! What the cross-call layer reports to whoever checks it: an observer the
//! layer above installs once at boot (the workload's invariant checker), so
//! that the cross-call core never names the checker. Each hook is called
//! where the core sees the event; without an observer they do nothing.

use guest_lib::cpumask::CpuMask;

use crate::kernel::sync::BootCell;

/// The observer's hooks (plain functions: called on the call paths, with
/// interrupts possibly off, so they must not block).
#[derive(Clone, Copy)]
pub struct CallObserver {
    /// A csd queued to this target was written without its lock held
    /// (invariant 2).
    pub csd_reinit: fn(target: u32),
    /// A waiter read a csd of a cfd its CPU freed going offline
    /// (`free-csd-offline`).
    pub csd_freed: fn(target: u32),
    /// A csd queued to this target stayed locked past its dying flush
    /// (`no-dying-flush`).
    pub dropped: fn(target: u32),
    /// flush-defer: the caller of `token` deferred `cpu` (it runs the
    /// callback when it resumes; the caller does not wait for it).
    pub defer: fn(token: usize, cpu: u32),
    /// flush-defer: that deferral was taken back (`cpu` resumed first).
    pub undefer: fn(token: usize, cpu: u32),
    /// flush-defer: this CPU ran the work deferred to it for `token`.
    pub deferred_run: fn(token: usize),
    /// A waiting call with callback argument `info` just returned from its
    /// wait (`skipped`: the offline targets it left out): the instant it
    /// claims every callback ran, where the checker looks at it (the
    /// caller's own check comes later, by when a skipped callback has
    /// usually run: an under-wait the checker would not see).
    pub wait_returned: fn(info: usize, skipped: &CpuMask),
}

fn ignore_cpu(_: u32) {}
fn ignore_token_cpu(_: usize, _: u32) {}
fn ignore_token(_: usize) {}
fn ignore_return(_: usize, _: &CpuMask) {}

static OBSERVER: BootCell<CallObserver> = BootCell::new(CallObserver {
    csd_reinit: ignore_cpu,
    csd_freed: ignore_cpu,
    dropped: ignore_cpu,
    defer: ignore_token_cpu,
    undefer: ignore_token_cpu,
    deferred_run: ignore_token,
    wait_returned: ignore_return,
});

/// Installs the observer (once).
///
/// # Safety
/// As [`BootCell::set`]: the BSP, at boot, before StartAps and before any
/// cross call.
pub unsafe fn set_observer(o: CallObserver) {
    // SAFETY: delegated to the caller.
    unsafe { OBSERVER.set(o) };
}

/// The observer in force.
pub(super) fn observer() -> CallObserver {
    OBSERVER.get()
}
