//! SIGINT (Ctrl-C) and SIGTERM during a run. The CLI installs a handler
//! that only records the signal; the controller polls it while it waits for
//! the guest and then stops the run the way the watchdog does (vCPUs
//! kicked, injectors stopped, affinities restored) and reports what it has,
//! marked partial. The handler resets itself: a second Ctrl-C kills the
//! process at once.

use std::sync::atomic::{AtomicI32, Ordering};

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
    // Async-signal-safe: one atomic store, and only the first signal counts.
    let _ = PENDING.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM (once per process is
/// enough; installing again is harmless).
pub fn install() -> Result<(), SignalError> {
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
            return Err(SignalError::Install {
                name: name(signal),
                source: std::io::Error::last_os_error(),
            });
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
