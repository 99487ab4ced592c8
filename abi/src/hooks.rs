//! Hidden fault injection into the guest ([`TestHook`]).

#[cfg(doc)]
use crate::{Control, GuestStatus, Results};

/// Hidden fault injection into the guest, so tests can prove that the VMM
/// handles each failure mode ([`Control::test_hook`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestHook {
    /// Normal run.
    None = 0,
    /// The hooked vCPU panics after boot.
    Panic = 1,
    /// The hooked vCPU triple-faults (an exception with no usable IDT).
    TripleFault = 2,
    /// The hooked vCPU spins forever with interrupts off: the watchdog fires.
    Hang = 3,
    /// The guest writes a wrong [`Results::magic`].
    BadResultsMagic = 4,
    /// The guest reports more vCPUs online than exist.
    BadOnlineCount = 5,
    /// A user task reads kernel-only memory (a page fault from CPL3).
    UserFault = 6,
    /// The hooked vCPU (use the BSP) scribbles seeded random bytes over
    /// the results block (all but its magic and version), the status
    /// entries and the per-vCPU results, then reports Done as usual.
    Garbage = 7,
    /// The hooked vCPU writes [`FLOOD_BYTES`] of console output without a
    /// newline, then goes on normally.
    ConsoleFlood = 8,
    /// The hooked AP halts for good before it comes online (a vCPU that
    /// ends early): the BSP waits for it until the watchdog fires.
    HaltEarly = 9,
    /// The hooked AP reports [`GuestStatus::Done`] itself, which only the
    /// BSP may do, then halts for good.
    DoneFromAp = 10,
    /// The hooked AP comes online, waits until the workload has run for
    /// half its duration, then triple-faults while the others run.
    TripleFaultLate = 11,
    /// Test-only fault in the guest's invariant checker: it records no
    /// violation, so a run of `unsafe-percpu` must then go uncaught (proving
    /// that the test which requires the catch can fail).
    BrokenChecker = 12,
    /// The hooked vCPU makes an ipivirt PV hypercall with an unknown
    /// operation: the VMM must stop the run with a clear error.
    BadHypercall = 13,
}

/// Console bytes written by [`TestHook::ConsoleFlood`].
pub const FLOOD_BYTES: usize = 1 << 20;

impl TryFrom<u32> for TestHook {
    type Error = u32;
    fn try_from(code: u32) -> Result<Self, u32> {
        Ok(match code {
            0 => TestHook::None,
            1 => TestHook::Panic,
            2 => TestHook::TripleFault,
            3 => TestHook::Hang,
            4 => TestHook::BadResultsMagic,
            5 => TestHook::BadOnlineCount,
            6 => TestHook::UserFault,
            7 => TestHook::Garbage,
            8 => TestHook::ConsoleFlood,
            9 => TestHook::HaltEarly,
            10 => TestHook::DoneFromAp,
            11 => TestHook::TripleFaultLate,
            12 => TestHook::BrokenChecker,
            13 => TestHook::BadHypercall,
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hook_roundtrip() {
        for h in 0..=13 {
            assert_eq!(TestHook::try_from(h).map(|h| h as u32), Ok(h));
        }
        assert_eq!(TestHook::try_from(14), Err(14));
    }
}
