//! Hidden fault injection into the guest ([`TestHook`]).

#[cfg(doc)]
use crate::{Control, GuestStatus, Results};

crate::wire_enum! {
    /// Hidden fault injection into the guest, so tests can prove that the VMM
    /// handles each failure mode ([`Control::test_hook`]).
    pub enum TestHook: u32, "test hook" {
        /// Normal run.
        None = 0 => "none",
        /// The hooked vCPU panics after boot.
        Panic = 1 => "panic",
        /// The hooked vCPU triple-faults (an exception with no usable IDT).
        TripleFault = 2 => "triple-fault",
        /// The hooked vCPU spins forever with interrupts off: the watchdog fires.
        Hang = 3 => "hang",
        /// The guest writes a wrong [`Results::magic`].
        BadResultsMagic = 4 => "bad-results-magic",
        /// The guest reports more vCPUs online than exist.
        BadOnlineCount = 5 => "bad-online-count",
        /// A user task reads kernel-only memory (a page fault from CPL3).
        UserFault = 6 => "user-fault",
        /// The hooked vCPU (use the BSP) scribbles seeded random bytes over
        /// the results block (all but its magic and version), the status
        /// entries and the per-vCPU results, then reports Done as usual.
        Garbage = 7 => "garbage",
        /// The hooked vCPU writes [`FLOOD_BYTES`] of console output without a
        /// newline, then goes on normally.
        ConsoleFlood = 8 => "console-flood",
        /// The hooked AP halts for good before it comes online (a vCPU that
        /// ends early): the BSP waits for it until the watchdog fires.
        HaltEarly = 9 => "halt-early",
        /// The hooked AP reports [`GuestStatus::Done`] itself, which only the
        /// BSP may do, then halts for good.
        DoneFromAp = 10 => "done-from-ap",
        /// The hooked AP comes online, waits until the workload has run for
        /// half its duration, then triple-faults while the others run.
        TripleFaultLate = 11 => "triple-fault-late",
        /// Test-only fault in the guest's invariant checker: it records no
        /// violation, so a run of `unsafe-percpu` must then go uncaught (proving
        /// that the test which requires the catch can fail).
        BrokenChecker = 12 => "broken-checker",
        /// The hooked vCPU makes an ipivirt PV hypercall with an unknown
        /// operation: the VMM must stop the run with a clear error.
        BadHypercall = 13 => "bad-hypercall",
        /// Each design phase gets one more task, on the hooked vCPU, that
        /// waits for a csd nobody will ever unlock (a callback that never
        /// runs): the phase cannot quiesce and must be reported as stalled.
        StuckTask = 14 => "stuck-task",
        /// The hooked vCPU's probe task disables preemption once, during the
        /// first design phase, for [`Control::test_hook_arg`] microseconds:
        /// a section of known length the preempt-off tracer must see.
        PinPreempt = 15 => "pin-preempt",
    }
}

/// Console bytes written by [`TestHook::ConsoleFlood`].
pub const FLOOD_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::check_set;

    #[test]
    fn test_hook_roundtrip() {
        check_set::<TestHook>(16, "user_fault");
        for (code, h) in TestHook::ALL.into_iter().enumerate() {
            assert_eq!(h as usize, code);
        }
        assert_eq!("user-fault".parse(), Ok(TestHook::UserFault));
        assert_eq!(TestHook::DoneFromAp.name(), "done-from-ap");
    }
}
