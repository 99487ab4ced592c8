//! KVM paravirtual features: steal time. With
//! [`abi::pv_flags::STEAL_TIME`] each vCPU hands KVM a 64-byte area
//! (MSR_KVM_STEAL_TIME) in which KVM accumulates the time the vCPU was
//! runnable on the host but not running, and sets `preempted` while the
//! vCPU is descheduled (not on every host: nested ones never set it).

use core::ptr::addr_of;
use core::sync::atomic::{fence, Ordering};

use crate::cpu;

/// MSR_KVM_STEAL_TIME.
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
    unsafe { cpu::wrmsr(MSR_KVM_STEAL_TIME, addr | KVM_MSR_ENABLED) };
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
            cpu::pause();
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
