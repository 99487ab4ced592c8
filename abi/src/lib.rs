//! The contract between the ipivirt VMM and its guest micro-kernel.
//!
//! Both sides compile this crate: the guest (`no_std`, for the host target)
//! and the VMM. Nothing here is redefined anywhere else: guest-physical
//! layout, I/O ports, the status codes written to the status port, and the
//! shared control/results page.
//!
//! The shared page is plain `#[repr(C)]` data made only of integers and
//! arrays of integers, so every bit pattern is a valid value ([`Pod`]).
//! The VMM treats everything the guest wrote as untrusted: it copies the
//! page out and checks it with the validation helpers here before using any
//! count or length in it.
//!
//! One module per concern, all re-exported here, so every item is also
//! reachable as `abi::Item`:
//!
//! | module | holds |
//! |---|---|
//! | [`layout`] | the guest-physical map |
//! | [`io`] | ports, guest status codes, interrupt vectors, system call numbers |
//! | [`control`] | [`Control`], the scenario the VMM writes |
//! | [`results`] | [`Results`], its records, [`VcpuStatus`], [`VcpuResults`], [`SharedPage`] |
//! | [`design`] | [`Design`], [`DesignResults`], the [`violation`] kinds |
//! | [`workload`] | [`Workload`] and the [`torture`] primitives |
//! | [`pv`] | PV feature bits, [`PvVcpuState`] and the hypercall operations |
//! | [`hooks`] | [`TestHook`] |
//! | [`preempt_off`] | [`PreemptOffResults`] (the preempt-off tracer), [`ProbeSplit`] |
//! | [`hist`] | [`Histogram`] |
//! | [`wire`] | [`wire_enum!`]: each closed set defined once |
#![cfg_attr(not(test), no_std)]

use core::mem::size_of;

/// Declares a plain-data result group: `repr(C)`, `Copy`, zero by
/// default, comparable, and (with the `serde` feature, in the VMM)
/// serialised whole under its field names, a missing field reading as 0.
/// One definition of what a group is, so that a counter added to a group
/// needs no copy or mirror anywhere.
macro_rules! plain_group {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[cfg_attr(
            feature = "serde",
            derive(serde::Serialize, serde::Deserialize),
            serde(default)
        )]
        pub struct $name { $($body)* }
    };
}

pub mod control;
pub mod design;
pub mod hist;
pub mod hooks;
pub mod io;
pub mod layout;
pub mod mode;
pub mod preempt_off;
pub mod pv;
pub mod results;
pub mod wire;
pub mod workload;

pub use control::{
    Control, Shape, DEFAULT_CSD_WATCHDOG_US, DEFAULT_PIN_PREEMPT_US, DEFAULT_PREEMPT_WINDOW_US,
    DEFAULT_QUIESCE_BOUND_US,
};
pub use design::{
    phase_status, task_state, violation, Design, DesignCounts, DesignResults, HotplugCounts,
    MemoryResults, PhaseEnd, PvCounts, ShapeCounts, StalledTask, ViolationKind, ViolationRecord,
    NO_WAIT, STALL_RECORDS,
};
pub use hist::Histogram;
pub use hooks::{TestHook, FLOOD_BYTES};
pub use io::{syscall, vector, GuestStatus, Port, PHASE_END};
pub use mode::{guest_mode, native_error};
pub use preempt_off::{PreemptOffCause, PreemptOffCpu, PreemptOffResults, ProbeSplit};
pub use pv::PvVcpuState;
pub use results::{
    panic_state, vcpu_state, verdict, ExceptionRecord, FloorResults, PanicRecord, Results,
    SchedCounts, SharedPage, TaskProgress, VcpuHotplug, VcpuResults, VcpuStatus,
};
pub use wire::{UnknownName, UnknownValue, WireEnum};
pub use workload::{torture, TortureCounts, TorturePrimitive, Workload};

/// Version of this contract; bumped on every layout change. The VMM writes
/// it into [`Control::abi_version`], the guest refuses a mismatch and echoes
/// it in [`Results::abi_version`].
pub const ABI_VERSION: u32 = 11;

/// [`Control::magic`]: "IPIVCTRL".
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"IPIVCTRL");

/// [`Results::magic`]: "IPIVRSLT", written by the guest with its results.
pub const RESULTS_MAGIC: u64 = u64::from_le_bytes(*b"IPIVRSLT");

/// The most vCPUs a guest can have (bounded by the per-vCPU status table
/// and the boot stacks).
pub const MAX_VCPUS: usize = 1024;

/// How many designs one run can compare.
pub const MAX_DESIGNS: usize = 8;

/// Hog tasks whose progress the results report ([`Results::hogs`]).
pub const MAX_HOGS: usize = 64;

/// Plain old data: `#[repr(C)]`, only integers and arrays of integers, no
/// padding. Any byte string of the right length is a valid value.
///
/// # Safety
/// Implement only for types that satisfy exactly that.
pub unsafe trait Pod: Copy + 'static {
    /// Copies a value out of the front of `bytes` (no alignment needed), or
    /// `None` if `bytes` is too short.
    fn read_from(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked above, `read_unaligned` has no
        // alignment requirement, and the trait's contract says every bit
        // pattern is a valid `Self`.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The bytes of `self`.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self` has no padding (trait contract), so all
        // `size_of::<Self>()` bytes behind `self` are initialised.
        unsafe {
            core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
        }
    }

    /// The all-zero value.
    fn zeroed() -> Self {
        // SAFETY: the trait contract says every bit pattern is valid.
        unsafe { core::mem::zeroed() }
    }
}

/// A value the guest wrote that breaks the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `results.nr_online`.
    pub field: &'static str,
    /// The value found.
    pub found: u64,
    /// What was expected, in words.
    pub expected: &'static str,
}

impl core::fmt::Display for FieldError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} = {:#x}, expected {}",
            self.field, self.found, self.expected
        )
    }
}

/// `Ok` if `ok`, else the [`FieldError`] made of the rest.
pub(crate) fn check(
    ok: bool,
    field: &'static str,
    found: u64,
    expected: &'static str,
) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(FieldError {
            field,
            found,
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pod_read_from_short_buffer_is_none() {
        assert!(Results::read_from(&[0u8; 16]).is_none());
        let r = Results::read_from(&[0xffu8; size_of::<Results>()]).unwrap();
        assert_eq!(r.magic, u64::MAX);
    }
}
