//!
//! Paravirtual features and the ipivirt PV interface.
//!
//! Features (bits of [`Control::pv_flags`], [`Control::phase_pv`],
//! [`Control::pv_kvm`] and [`DesignResults::pv`]) each use KVM's mechanism
//! when the host offers it and ipivirt's otherwise:
//!
//! | feature | KVM | ipivirt |
//! |---|---|---|
//! | `steal-time` | MSR_KVM_STEAL_TIME | (none: KVM's only) |
//! | `preempted` | steal-time `preempted` byte | [`PvVcpuState::state`] |
//! | `send-ipi` | KVM_HC_SEND_IPI (`vmcall`) | [`OP_SEND_IPI`] hypercall |
//! | `sched-yield` | KVM_HC_SCHED_YIELD (`vmcall`) | [`OP_YIELD_TO`] hypercall |
//! | `flush-defer` | (KVM flushes in the host: not usable here) | [`STATE_FLUSH`] |
//!
//! The ipivirt interface: vCPU `i` owns a [`PvVcpuState`] at
//! [`layout::pv_state_addr`]. The VMM writes `state`, `seq`, `since_ns` and
//! `preemptions` while it holds the vCPU (injection `pause`, exact) or while
//! an antagonist runs on the vCPU's host CPU (`antagonist`). A hypercall:
//! the vCPU writes `op` and its arguments into its own block, then reads
//! 32 bits from [`Port::Hypercall`]; the value read is the result. A
//! malformed request stops the run with an error.

use core::mem::size_of;

#[cfg(doc)]
use crate::{layout, Control, DesignResults, Port};
use crate::{Pod, MAX_VCPUS};

/// KVM steal time on every vCPU (global).
pub const STEAL_TIME: u32 = 1 << 0;
/// Track whether wait targets are preempted (global, and per phase).
pub const PREEMPTED: u32 = 1 << 1;
/// Multicast IPIs with one hypercall.
pub const SEND_IPI: u32 = 1 << 2;
/// A waiter yields to a preempted target (rate-limited).
pub const SCHED_YIELD: u32 = 1 << 3;
/// Shootdowns defer preempted targets instead of waiting for them.
pub const FLUSH_DEFER: u32 = 1 << 4;
/// Every feature.
pub const ALL: u32 = 0x1f;
/// Feature names, in bit order.
pub const NAMES: [&str; 5] = [
    "steal-time",
    "preempted",
    "send-ipi",
    "sched-yield",
    "flush-defer",
];

/// [`PvVcpuState::state`]: the VMM holds this vCPU.
pub const STATE_PREEMPTED: u32 = 1 << 0;
/// Held with interrupts enabled: a deferred flush requested meanwhile
/// runs (vector FLUSH_DEFER) before anything else when it resumes.
pub const STATE_DEFERRABLE: u32 = 1 << 1;
/// A caller deferred work to this vCPU's resume (guest, compare-and-swap
/// while PREEMPTED and DEFERRABLE are set; the VMM clears the word with
/// an exchange when it resumes the vCPU and sends FLUSH_DEFER if set).
pub const STATE_FLUSH: u32 = 1 << 2;

/// Hypercall: send `vector` to every vCPU in `bitmap` (x2APIC id =
/// vCPU index) with KVM_SIGNAL_MSI. Result: IPIs sent.
pub const OP_SEND_IPI: u32 = 1;
/// Hypercall: directed yield to vCPU `arg`: ends an injected pause of
/// it early. Result: 1 if a pause was ended, 0 if it was not held.
pub const OP_YIELD_TO: u32 = 2;

/// Calls `out` with the name of every feature in `features`, in bit order.
pub fn names(features: u32, mut out: impl FnMut(&'static str)) {
    for (i, n) in NAMES.iter().enumerate() {
        if features & (1 << i) != 0 {
            out(n);
        }
    }
}

/// One vCPU's ipivirt PV state ([`crate::pv`]), at [`layout::pv_state_addr`].
/// `state`, `seq`, `since_ns`, `preemptions` and `flushes` are the VMM's
/// (the guest only reads them, and sets [`STATE_FLUSH`] in `state`);
/// the request fields are the vCPU's own.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct PvVcpuState {
    /// `STATE_*` bits.
    pub state: u32,
    /// Incremented when a preemption starts and when it ends (odd: held).
    pub seq: u32,
    /// When the current (or last) preemption started: host ns since the VM
    /// was created.
    pub since_ns: u64,
    /// Preemptions so far.
    pub preemptions: u64,
    /// Resumes at which the VMM sent FLUSH_DEFER.
    pub flushes: u64,
    /// Request: an `OP_*`.
    pub op: u32,
    /// Request: the vector of `OP_SEND_IPI`.
    pub vector: u32,
    /// Request: the target vCPU of `OP_YIELD_TO`.
    pub arg: u64,
    /// Request: the targets of `OP_SEND_IPI`, bit `i` = vCPU `i`.
    pub bitmap: [u64; MAX_VCPUS / 64],
    /// CPU hotplug request, the VMM's: `seq << 1 | offline` (0: none
    /// yet); the latest request wins. The guest polls it in its tick and
    /// on the [`HOTPLUG`](crate::vector::HOTPLUG) interrupt.
    pub hotplug_request: u32,
    /// The guest's: the last `hotplug_request` value it acted on (or
    /// refused, with [`HOTPLUG_REFUSED`] set).
    pub hotplug_done: u32,
    /// Zero.
    pub reserved: [u64; 1],
}

/// [`PvVcpuState::hotplug_request`]: take the vCPU offline (clear: online).
pub const HOTPLUG_OFFLINE: u32 = 1;
/// [`PvVcpuState::hotplug_done`]: the guest refused the request (the boot
/// vCPU, or fewer than two vCPUs would stay online).
pub const HOTPLUG_REFUSED: u32 = 1 << 31;

// SAFETY: repr(C) of u32 pairs and u64s, no padding (size assert).
unsafe impl Pod for PvVcpuState {}
const _: () = assert!(size_of::<PvVcpuState>() == 192);
