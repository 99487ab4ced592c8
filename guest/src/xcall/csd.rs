//! The `call_single_data` (csd) and a CPU's `call_function_data` (cfd):
//! the csd lock (CSD_FLAG_LOCK, taken by the single writer, cleared by the
//! target) and the shadow marks the broken hotplug variants leave.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use abi::preempt_off::cause as poff;
use abi::MAX_VCPUS;
use guest_lib::cpumask::{nr_cpu_ids, CpuMask, SharedMask};
use guest_lib::llist::{Link, Node};

use super::observer::observer;
use super::{nop, CallFn};
use crate::kernel::{arch, hotplug, percpu, trace};

/// The csd is in use (set by its writer, cleared by the target).
pub(super) const CSD_FLAG_LOCK: u32 = 0x01;
/// A waiter spins on this csd: unlock only after the callback ran.
pub(super) const CSD_TYPE_SYNC: u32 = 0x10;
/// What `free-csd-offline` fills a retired cfd's idle csds with (the slab
/// poison byte; the lock bit set, so a reader spins rather than reuses it).
pub(super) const CSD_POISON: u32 = 0x6b6b_6b6b;
/// Set by `no-dying-flush` on each csd it drops (still locked): the
/// checker's shadow mark, so that its waiter can tell (and recover).
pub(super) const CSD_FLAG_DROPPED: u32 = 0x100;

/// `call_single_data`.
pub struct Csd {
    /// Its link in a call queue.
    next: Link<Csd>,
    pub(super) flags: AtomicU32,
    pub(super) func: UnsafeCell<CallFn>,
    pub(super) info: UnsafeCell<usize>,
    /// The CPU it was last queued to (Linux's CSD_LOCK_WAIT_DEBUG `dst`).
    pub(super) dst: AtomicU32,
    /// That CPU's hotplug generation when it was queued: once the CPU's
    /// generation moves on, its dying flush has run (and unlocked) it.
    pub(super) gen: AtomicU32,
}

// SAFETY: `func`, `info` and `next` are written only by the csd's single
// writer while it holds CSD_FLAG_LOCK and the csd is in no queue, or by the
// target that drained it from its queue; the lock flag and the queue
// head (atomics) order those hand-overs.
unsafe impl Sync for Csd {}

// SAFETY: `next` is the csd's own link field, used only by the call queue.
unsafe impl Node for Csd {
    fn link(&self) -> &Link<Csd> {
        &self.next
    }
}

impl Csd {
    /// An unlocked csd.
    pub const fn new() -> Self {
        Csd {
            next: Link::new(),
            flags: AtomicU32::new(0),
            func: UnsafeCell::new(nop),
            info: UnsafeCell::new(0),
            dst: AtomicU32::new(u32::MAX),
            gen: AtomicU32::new(0),
        }
    }

    /// Whether the csd is locked (a callback pending or running).
    pub fn locked(&self) -> bool {
        // Acquire: pairs with the Release in csd_unlock, so a waiter that
        // sees the flag clear also sees what the callback wrote.
        self.flags.load(Ordering::Acquire) & CSD_FLAG_LOCK != 0
    }
}

/// Per-CPU cfd, allocated on first use, never freed.
pub(super) static CFD: [AtomicPtr<Cfd>; MAX_VCPUS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; MAX_VCPUS];

/// A CPU's `call_function_data`.
pub struct Cfd {
    /// One csd per target CPU.
    pub csd: Box<[Csd]>,
    /// Targets of the current call (`cfd->cpumask`): written by the owner
    /// while pinned; read by the upstream wait and by the unsafe design.
    pub cpumask: SharedMask,
    /// Targets whose queue went from empty to non-empty (owner only).
    pub(super) cpumask_ipi: UnsafeCell<CpuMask>,
    /// flush-defer's scratch mask (`__pv_cpu_mask`; owner only, pinned).
    pub(super) flushmask: UnsafeCell<CpuMask>,
    /// `free-csd-offline` only: its CPU went offline and "freed" it (the
    /// shadow state a memory checker keeps; the memory itself is leaked so
    /// the broken variant cannot crash the guest).
    pub(super) freed: AtomicBool,
}

// SAFETY: `csd` entries are Sync; `cpumask` is atomic; `cpumask_ipi` and
// `flushmask` are only touched by the owning CPU while pinned.
unsafe impl Sync for Cfd {}

/// CPU `cpu`'s cfd. Allocated by that CPU (pinned) on its first call.
pub fn cfd_of(cpu: u32) -> &'static Cfd {
    let slot = &CFD[cpu as usize];
    let mut p = slot.load(Ordering::Acquire);
    if p.is_null() {
        debug_assert_eq!(cpu, percpu::cpu_id(), "only the owner allocates its cfd");
        let csd: Vec<Csd> = (0..nr_cpu_ids()).map(|_| Csd::new()).collect();
        let cfd = Box::new(Cfd {
            csd: csd.into_boxed_slice(),
            cpumask: SharedMask::new(),
            cpumask_ipi: UnsafeCell::new(CpuMask::new()),
            flushmask: UnsafeCell::new(CpuMask::new()),
            freed: AtomicBool::new(false),
        });
        p = Box::into_raw(cfd);
        // Release: the initialised cfd before its pointer.
        slot.store(p, Ordering::Release);
    }
    // SAFETY: cfds are never freed.
    unsafe { &*p }
}

/// Whether `csd`, locked, was queued to a CPU that has gone offline since
/// (its dying flush should have unlocked it): `no-dying-flush`'s bug. The
/// generation is read first (Acquire), then the lock again, so a csd the
/// flush did unlock is never taken for a dropped one.
pub(super) fn dropped(csd: &Csd) -> bool {
    if csd.flags.load(Ordering::Acquire) & CSD_FLAG_DROPPED != 0 {
        return true;
    }
    let dst = csd.dst.load(Ordering::Relaxed);
    (dst as usize) < MAX_VCPUS
        && hotplug::generation(dst) != csd.gen.load(Ordering::Relaxed)
        && csd.locked()
}

/// A dropped csd: recorded, then unlocked here so that the run goes on (a
/// real kernel would hang in this wait).
pub(super) fn recover_dropped(csd: &Csd) {
    (observer().dropped)(csd.dst.load(Ordering::Relaxed));
    csd_unlock(csd);
}

/// Waits until `csd` is unlocked, then locks it (single writer: we are
/// pinned on the csd's owning CPU, or it is on our stack).
pub(super) fn csd_lock(csd: &Csd) {
    if csd.locked() {
        let tag = trace::cause(poff::CSD_LOCK);
        while csd.locked() {
            if dropped(csd) {
                recover_dropped(csd);
                break;
            }
            arch::pause();
        }
        trace::cause(tag);
    }
    csd.flags.store(CSD_FLAG_LOCK, Ordering::Relaxed);
}

/// Unlocks `csd` (target side).
pub(super) fn csd_unlock(csd: &Csd) {
    // Release: the callback's effects (sync) before the waiter sees it done.
    csd.flags.store(0, Ordering::Release);
}
