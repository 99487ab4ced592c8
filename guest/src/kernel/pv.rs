//! The guest's paravirtual plumbing with the host: KVM's steal-time area
//! (steal time and KVM's `preempted` flag), ipivirt's per-vCPU PV state
//! that the VMM writes ([`abi::PvVcpuState`]), and the two hypercall
//! mechanisms: KVM's (`vmcall`, `vmmcall` on AMD) and ipivirt's port-I/O
//! one. The policies built on them (which features a phase uses,
//! sched-yield, flush-defer) live in the cross-call layer (`xcall::pv`).

use core::ptr::addr_of;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};

use abi::{layout, pv, PvVcpuState, MAX_VCPUS};

use crate::kernel::{arch, percpu};

const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
/// Enable bit of the MSR value.
const KVM_MSR_ENABLED: u64 = 1;

/// `struct kvm_steal_time` (64 bytes, 64-byte aligned).
#[repr(C, align(64))]
pub struct StealTime {
    steal: u64,
    version: u32,
    flags: u32,
    preempted: u8,
    pad: [u8; 3],
    pad2: [u32; 11],
}

const _: () = assert!(core::mem::size_of::<StealTime>() == 64);

/// One area per possible vCPU, written by KVM (in .bss: zeroed).
static mut AREAS: [StealTime; abi::MAX_VCPUS] = [const {
    StealTime {
        steal: 0,
        version: 0,
        flags: 0,
        preempted: 0,
        pad: [0; 3],
        pad2: [0; 11],
    }
}; abi::MAX_VCPUS];

fn area(index: u32) -> *const StealTime {
    assert!((index as usize) < abi::MAX_VCPUS);
    // SAFETY: only computes the address of an element in bounds.
    unsafe { addr_of!(AREAS[index as usize]) }
}

/// Registers vCPU `index`'s steal-time area with KVM (on that vCPU).
pub fn enable_steal_time(index: u32) {
    let addr = area(index) as u64;
    // SAFETY: guest memory is identity-mapped, so the address is the
    // guest-physical one; the area is 64-byte aligned, reserved for this
    // vCPU for the guest's lifetime, and only read by the guest.
    unsafe { arch::wrmsr(MSR_KVM_STEAL_TIME, addr | KVM_MSR_ENABLED) };
}

/// Steal time of vCPU `index` in ns, read with KVM's version protocol:
/// the version must be even (no update in progress) and unchanged after
/// reading the value.
pub fn steal_ns(index: u32) -> u64 {
    let a = area(index);
    loop {
        // SAFETY: `a` points to a live, aligned area; KVM writes it
        // concurrently, so every access is volatile.
        let v1 = unsafe { addr_of!((*a).version).read_volatile() };
        if v1 & 1 != 0 {
            arch::pause();
            continue;
        }
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let steal = unsafe { addr_of!((*a).steal).read_volatile() };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let v2 = unsafe { addr_of!((*a).version).read_volatile() };
        if v1 == v2 {
            return steal;
        }
    }
}

/// Whether KVM currently marks vCPU `index` as preempted.
#[inline]
pub fn preempted(index: u32) -> bool {
    // SAFETY: as in `steal_ns`; a single byte read.
    unsafe { addr_of!((*area(index)).preempted).read_volatile() != 0 }
}

/// The KVM hypercall instruction is `vmmcall`.
static AMD: AtomicBool = AtomicBool::new(false);
/// Steal time is registered on every vCPU (KVM's `preempted` is readable).
static STEAL: AtomicBool = AtomicBool::new(false);

/// Sets the run-wide settings (BSP, before the workload).
pub fn configure(control: &abi::Control) {
    AMD.store(control.pv_amd != 0, Ordering::Relaxed);
    // KVM's area only where the VMM's probe saw KVM accept it (elsewhere
    // the MSR write could fault).
    STEAL.store(
        control.pv_flags & (pv::STEAL_TIME | pv::PREEMPTED) != 0
            && control.pv_kvm & pv::STEAL_TIME != 0,
        Ordering::Relaxed,
    );
}

/// Whether steal time is registered on every vCPU (run-wide).
pub fn steal_registered() -> bool {
    STEAL.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------
// ipivirt's PV state (written by the VMM) and `vcpu_is_preempted()`.

/// vCPU `cpu`'s PV state block.
pub fn pv_state(cpu: u32) -> *mut PvVcpuState {
    assert!((cpu as usize) < MAX_VCPUS);
    layout::pv_state_addr(cpu) as *mut PvVcpuState
}

/// The `state` word of vCPU `cpu`'s PV state (PREEMPTED, DEFERRABLE, FLUSH).
pub fn state_word(cpu: u32) -> &'static AtomicU32 {
    // SAFETY: the PV state area is identity-mapped guest RAM reserved by
    // the layout, naturally aligned; the VMM and the guest access `state`
    // only atomically.
    unsafe { AtomicU32::from_ptr(core::ptr::addr_of_mut!((*pv_state(cpu)).state)) }
}

/// The `seq` word of vCPU `cpu`'s PV state (odd while the VMM holds it).
pub fn seq_word(cpu: u32) -> &'static AtomicU32 {
    // SAFETY: as in `state_word`.
    unsafe { AtomicU32::from_ptr(core::ptr::addr_of_mut!((*pv_state(cpu)).seq)) }
}

/// Preemption sources: KVM's flag.
pub const SEEN_KVM: u32 = 1;
/// Preemption sources: ipivirt's state.
pub const SEEN_IPIVIRT: u32 = 2;

/// `vcpu_is_preempted(cpu)`: which sources say `cpu` is preempted now
/// (0: running, as far as anyone knows).
#[inline]
pub fn preempted_sources(cpu: u32) -> u32 {
    let mut s = 0;
    if state_word(cpu).load(Ordering::Acquire) & pv::STATE_PREEMPTED != 0 {
        s |= SEEN_IPIVIRT;
    }
    if STEAL.load(Ordering::Relaxed) && preempted(cpu) {
        s |= SEEN_KVM;
    }
    s
}

/// The VMM's preemption sequence of `cpu` (odd while held).
pub fn preempt_seq(cpu: u32) -> u32 {
    seq_word(cpu).load(Ordering::Acquire)
}

// ---------------------------------------------------------------------
// Hypercalls.

/// The ipivirt hypercall: the request is in this vCPU's PV state.
pub fn ipivirt_hypercall() -> u32 {
    let ret: u32;
    // SAFETY: port I/O traps to the VMM, which reads the request from this
    // vCPU's PV state (written before: `in` is ordered after our stores,
    // the VM exit being serialising) and returns the result in eax.
    unsafe {
        core::arch::asm!("in eax, dx", in("dx") abi::Port::Hypercall as u16, out("eax") ret, options(nostack, preserves_flags))
    };
    ret
}

/// Test hook: an ipivirt hypercall with an operation that does not exist
/// (the VMM must refuse it and stop the run).
pub fn bad_hypercall() {
    let st = pv_state(percpu::cpu_id());
    // SAFETY: this vCPU's own request block.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).op), 0x99) };
    ipivirt_hypercall();
}

/// KVM hypercall numbers.
pub const KVM_HC_SEND_IPI: u64 = 10;
pub const KVM_HC_SCHED_YIELD: u64 = 11;
/// Fixed delivery mode in the ICR value KVM_HC_SEND_IPI takes.
pub const APIC_DM_FIXED: u64 = 0;

/// A KVM hypercall (`nr` in rax, arguments in rbx, rcx, rdx, rsi). Only
/// called when the VMM's probe saw a hypercall complete on this host (on
/// some hosts the vCPU never returns from one).
pub fn kvm_hypercall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: i64;
    // SAFETY: a hypercall changes no guest memory we rely on and returns
    // in rax; rbx is reserved by the compiler, so it is swapped in and
    // out around the instruction.
    unsafe {
        if AMD.load(Ordering::Relaxed) {
            core::arch::asm!("xchg {a0}, rbx", "vmmcall", "xchg {a0}, rbx",
                a0 = inout(reg) a0 => _, inout("rax") nr => ret,
                in("rcx") a1, in("rdx") a2, in("rsi") a3, options(nostack))
        } else {
            core::arch::asm!("xchg {a0}, rbx", "vmcall", "xchg {a0}, rbx",
                a0 = inout(reg) a0 => _, inout("rax") nr => ret,
                in("rcx") a1, in("rdx") a2, in("rsi") a3, options(nostack))
        }
    }
    ret
}
