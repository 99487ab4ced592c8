//! SIGINT (Ctrl-C) and SIGTERM during a run. The CLI installs a handler
//! that only records the signal; the controller polls it while it waits for
//! the guest and then stops the run the way the watchdog does (vCPUs
//! kicked, injectors stopped, affinities restored) and reports what it has,
//! marked partial. A second signal (either of the two) kills the process
//! at once: the handler is installed once per process (installing it
//! again, e.g. per sweep cell, would re-arm it), resets itself, and on a
//! second signal of the other kind restores the default action and
//! re-raises it.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// The first signal received (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// `sigaction` refused.
    #[error("cannot install the handler for {name}: {source}")]
    Install {
        /// The signal's name.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

extern "C" fn on_signal(signal: libc::c_int) {
    // Async-signal-safe: atomics, signal() and raise() only.
    if PENDING
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // A second signal: die of it now. It is blocked while this handler
        // runs, so it is delivered, with the default action, on return.
        // SAFETY: signal() and raise() are async-signal-safe; SIG_DFL is a
        // valid disposition for SIGINT and SIGTERM.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
}

/// Installs the handler for SIGINT and SIGTERM. Only the first call per
/// process installs it; later ones return its result, so that a handler
/// the first signal reset is never re-armed.
pub fn install() -> Result<(), SignalError> {
    static INSTALLED: OnceLock<Result<(), (&'static str, i32)>> = OnceLock::new();
    (*INSTALLED.get_or_init(install_now)).map_err(|(name, errno)| SignalError::Install {
        name,
        source: std::io::Error::from_raw_os_error(errno),
    })
}

fn install_now() -> Result<(), (&'static str, i32)> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no
        // flags) that is filled in below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // One-shot: the default action (death) is back for a second signal.
        action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        // SAFETY: `action` is a valid sigaction, the old action is not
        // asked for (null), and the handler is async-signal-safe.
        let rc = unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err((name(signal), errno));
        }
    }
    Ok(())
}

/// The signal that asked the run to stop, if any.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `SIGINT`, `SIGTERM`, or `signal N`.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The exit code for a run stopped by `signal`: 128 + its number, the
/// shell's convention (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(signal: i32) -> u8 {
    match signal {
        libc::SIGTERM => crate::exit_code::TERMINATED,
        _ => crate::exit_code::INTERRUPTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_signals_names_and_exit_codes() {
        assert_eq!(name(libc::SIGINT), "SIGINT");
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(exit_code(libc::SIGINT), 130);
        assert_eq!(exit_code(libc::SIGTERM), 143);
    }
}
