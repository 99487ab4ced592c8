//! Spinlocks that disable interrupts while held, so an interrupt handler
//! (or a reschedule) on the same vCPU can never spin on a lock its own
//! interrupted context holds.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::kernel::arch;

/// A spinlock that saves and disables interrupts while held.
pub struct IrqSpinLock<T> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `data` across vCPUs.
unsafe impl<T: Send> Sync for IrqSpinLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for IrqSpinLock<T> {}

impl<T> IrqSpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> Self {
        IrqSpinLock {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(value),
        }
    }

    /// Disables interrupts and takes the lock.
    pub fn lock(&self) -> IrqSpinGuard<'_, T> {
        let irq = arch::irq_save();
        // Acquire: pairs with the Release in Drop, so the previous owner's
        // writes to `data` are visible.
        while self.locked.swap(true, Ordering::Acquire) {
            while self.locked.load(Ordering::Relaxed) {
                arch::pause();
            }
        }
        IrqSpinGuard { lock: self, irq }
    }
}

/// Holds an [`IrqSpinLock`]; unlocks and restores interrupts on drop.
pub struct IrqSpinGuard<'a, T> {
    lock: &'a IrqSpinLock<T>,
    irq: bool,
}

impl<T> Deref for IrqSpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for IrqSpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, exclusively.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for IrqSpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        arch::irq_restore(self.irq);
    }
}

/// A value set at most once, at boot, before any other CPU runs, and read
/// freely afterwards: the registration points (interrupt handlers, task
/// hooks, system calls) through which the layers above plug into the
/// kernel. Reads need no lock because no write can race them.
pub struct BootCell<T: Copy> {
    value: UnsafeCell<T>,
    set: AtomicBool,
}

// SAFETY: the only write happens in `set`, whose contract excludes
// concurrent readers; afterwards the value is only read (T: Copy).
unsafe impl<T: Copy + Send> Sync for BootCell<T> {}

impl<T: Copy> BootCell<T> {
    /// A cell holding `default` until set.
    pub const fn new(default: T) -> Self {
        BootCell {
            value: UnsafeCell::new(default),
            set: AtomicBool::new(false),
        }
    }

    /// Sets the value. Panics if it was set before.
    ///
    /// # Safety
    /// Only the BSP calls this, at boot, before StartAps and before anything
    /// that reads the cell can run (no task, no interrupt source for it).
    pub unsafe fn set(&self, v: T) {
        assert!(
            !self.set.swap(true, Ordering::Relaxed),
            "a boot cell set twice"
        );
        // SAFETY: no reader runs concurrently (caller's contract).
        unsafe { *self.value.get() = v };
    }

    /// The value.
    pub fn get(&self) -> T {
        // SAFETY: written only before any concurrent reader exists (`set`).
        unsafe { *self.value.get() }
    }
}
