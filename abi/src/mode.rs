//! The guest kernel's mode: what a run asks for and what ran (the plain
//! CPL0 kernel or the PVM host's native mode), and why native mode did not
//! run when it was asked for.

/// How the guest kernel runs ([`Control::guest_mode`](crate::Control::guest_mode) asks,
/// [`Results::mode`](crate::Results::mode) and [`VcpuStatus::mode`](crate::VcpuStatus::mode) say what ran).
pub mod guest_mode {
    /// Ask: the PVM host's native mode where the VMM saw the host offer it,
    /// the plain kernel everywhere else.
    pub const AUTO: u32 = 0;
    /// An ordinary x86-64 kernel at CPL0 (emulated on PVM hosts).
    pub const PLAIN: u32 = 1;
    /// The PVM host's native mode: kernel code runs on the hardware at CPL3
    /// with a virtual interrupt flag (see `../shared/design/native-mode.md`).
    pub const PVM_NATIVE: u32 = 2;

    /// The name reports use.
    pub const fn name(mode: u32) -> &'static str {
        match mode {
            AUTO => "auto",
            PLAIN => "plain",
            PVM_NATIVE => "pvm-native",
            _ => "unknown",
        }
    }
}

/// Why the guest did not run in native mode although it was asked to
/// ([`Results::native_error`](crate::Results::native_error)).
pub mod native_error {
    /// None: native mode ran, or was not asked for.
    pub const NONE: u32 = 0;
    /// The host signature MSR did not read "PVM" (or raised #GP).
    pub const NOT_DETECTED: u32 = 1;
    /// The switch MSR write raised #GP.
    pub const SWITCH_FAULTED: u32 = 2;
    /// After the switch, CS did not read RPL 3 (still emulated at CPL0).
    pub const STILL_CPL0: u32 = 3;
    /// After the switch, the calibration loop was still slow (emulated).
    pub const STILL_EMULATED: u32 = 4;
    /// A null hypercall did not return -ENOSYS, or changed registers the
    /// backend relies on (the host module's ABI changed).
    pub const HYPERCALL_ABI: u32 = 5;

    /// What each code means, for reports.
    pub const fn describe(code: u32) -> &'static str {
        match code {
            NONE => "none",
            NOT_DETECTED => "the host's PVM signature MSR (0x4b564d11) did not read \"PVM\"",
            SWITCH_FAULTED => "the switch to native mode (wrmsr 0x4b564d10) raised #GP",
            STILL_CPL0 => "after the switch the kernel still ran at CPL0 (CS RPL 0)",
            STILL_EMULATED => "after the switch kernel code was still emulated (slow loop)",
            HYPERCALL_ABI => "the host's hypercall ABI is not the one the native backend relies on",
            _ => "unknown",
        }
    }
}
