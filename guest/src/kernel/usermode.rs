//! User mode: user stacks (slots of the user window, which the VMM maps
//! user-accessible). Entering CPL3 and the system-call instruction are arch
//! operations ([`crate::kernel::arch::enter_user`], [`crate::kernel::arch::sys`]);
//! the task bodies belong to the workloads.

use abi::layout::{USER_WINDOW_ADDR, USER_WINDOW_SIZE};

use crate::kernel::sync::IrqSpinLock;

/// Size of one user stack.
pub const USER_STACK_SIZE: u64 = 16 << 10;
const SLOTS: usize = (USER_WINDOW_SIZE / USER_STACK_SIZE) as usize;

static SLOT_BITMAP: IrqSpinLock<[u64; SLOTS / 64]> = IrqSpinLock::new([0; SLOTS / 64]);

/// A user stack slot, owned by one task.
pub struct UserStack(usize);

impl UserStack {
    /// Takes a free slot.
    pub fn alloc() -> Option<Self> {
        let mut map = SLOT_BITMAP.lock();
        for (w, word) in map.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = (!*word).trailing_zeros() as usize;
                *word |= 1 << bit;
                return Some(UserStack(w * 64 + bit));
            }
        }
        None
    }

    /// Returns the slot.
    pub fn free(self) {
        SLOT_BITMAP.lock()[self.0 / 64] &= !(1 << (self.0 % 64));
    }

    /// Initial user RSP (16-byte aligned minus 8, as after a call).
    pub fn top(&self) -> u64 {
        USER_WINDOW_ADDR + (self.0 as u64 + 1) * USER_STACK_SIZE - 8
    }
}
