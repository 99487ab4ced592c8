//! Access to the shared control/results page at
//! [`abi::layout::SHARED_ADDR`]. The VMM wrote `control` before any vCPU
//! started; `results` and `vcpus` are written here, concurrently by several
//! vCPUs, so shared counters are accessed as atomics.

use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, AtomicU64};

use abi::{Control, DesignResults, ExceptionRecord, PanicRecord, Results, SharedPage, VcpuStatus};

fn page() -> *mut SharedPage {
    abi::layout::SHARED_ADDR as *mut SharedPage
}

/// A copy of the control block.
pub fn control() -> Control {
    // SAFETY: the VMM maps guest RAM (identity) over SHARED_ADDR and wrote
    // the control block before starting any vCPU; nothing writes it after,
    // so a plain read cannot race.
    unsafe { addr_of_mut!((*page()).control).read_volatile() }
}

/// The results block (written by the BSP, and by a panicking vCPU).
pub fn results() -> *mut Results {
    // SAFETY: only computes a field address inside the mapped page.
    unsafe { addr_of_mut!((*page()).results) }
}

/// The panic record inside the results block.
pub fn panic_record() -> *mut PanicRecord {
    // SAFETY: only computes a field address inside the mapped page.
    unsafe { addr_of_mut!((*results()).panic) }
}

/// The exception record inside the results block.
pub fn exception_record() -> *mut ExceptionRecord {
    // SAFETY: only computes a field address inside the mapped page.
    unsafe { addr_of_mut!((*results()).exception) }
}

/// Results slot of design number `i` (< MAX_DESIGNS).
pub fn design_results(i: usize) -> *mut DesignResults {
    assert!(i < abi::MAX_DESIGNS);
    // SAFETY: index checked above; only computes an address in the page.
    unsafe { addr_of_mut!((*page()).designs[i]) }
}

/// Status entry of vCPU `index` (< MAX_VCPUS; the VMM never starts more).
pub fn vcpu(index: u32) -> *mut VcpuStatus {
    assert!((index as usize) < abi::MAX_VCPUS);
    // SAFETY: index is in bounds of the array (checked above).
    unsafe { addr_of_mut!((*page()).vcpus[index as usize]) }
}

/// Views a `u32` of the shared page as an atomic.
///
/// # Safety
/// `p` must point into the shared page, 4-byte aligned (every `u32` field
/// of the `#[repr(C)]` layout is).
pub unsafe fn atomic_u32(p: *mut u32) -> &'static AtomicU32 {
    // SAFETY: the page is mapped for the guest's lifetime and aligned (caller);
    // all concurrent accesses to it go through atomics.
    unsafe { AtomicU32::from_ptr(p) }
}

/// Views a `u64` of the shared page as an atomic.
///
/// # Safety
/// As [`atomic_u32`], 8-byte aligned.
pub unsafe fn atomic_u64(p: *mut u64) -> &'static AtomicU64 {
    // SAFETY: as in atomic_u32.
    unsafe { AtomicU64::from_ptr(p) }
}
