//! Spinlocks that disable interrupts while held, so an interrupt handler
//! (or a reschedule) on the same vCPU can never spin on a lock its own
//! interrupted context holds.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu;

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
        let irq = cpu::irq_save();
        // Acquire: pairs with the Release in Drop, so the previous owner's
        // writes to `data` are visible.
        while self.locked.swap(true, Ordering::Acquire) {
            while self.locked.load(Ordering::Relaxed) {
                cpu::pause();
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
        cpu::irq_restore(self.irq);
    }
}
