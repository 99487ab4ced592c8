//! System calls from user tasks: number in rax, argument in rdi, result in
//! rax (see [`abi::syscall`]). They arrive through the arch layer's
//! system-call entry and run on the task's kernel stack with interrupts
//! off. The kernel serves its own (yield, exit, sleep, getcpu); the layers
//! above [`register`] theirs once at boot, so the kernel needs to know
//! nothing of them.

use abi::syscall;

use crate::kernel::arch::TrapFrame;
use crate::kernel::sync::BootCell;
use crate::kernel::{percpu, sched};

/// A system call handler: gets the frame (rdi = argument), returns rax.
pub type Handler = fn(&mut TrapFrame) -> u64;

/// Room for every number in [`abi::syscall`].
const SLOTS: usize = 16;

/// Registered handlers.
static TABLE: [BootCell<Option<Handler>>; SLOTS] = [const { BootCell::new(None) }; SLOTS];

/// Registers `handler` for system call `nr` (once per number). A kernel
/// number or one out of range is a bug: it panics.
///
/// # Safety
/// As [`BootCell::set`]: the BSP, at boot, before any user task runs.
pub unsafe fn register(nr: u64, handler: Handler) {
    assert!(
        (nr as usize) < SLOTS && nr > syscall::GETCPU,
        "a kernel system call number, or one out of range"
    );
    // SAFETY: delegated to the caller.
    unsafe { TABLE[nr as usize].set(Some(handler)) };
}

/// Handles the system call in `frame`. An unknown number returns u64::MAX.
pub fn dispatch(frame: &mut TrapFrame) {
    frame.rax = match frame.rax {
        syscall::YIELD => {
            sched::yield_now();
            0
        }
        syscall::EXIT => sched::exit(),
        syscall::SLEEP_US => {
            sched::sleep_us(frame.rdi);
            0
        }
        syscall::GETCPU => u64::from(percpu::cpu_id()),
        nr => match TABLE.get(nr as usize).and_then(BootCell::get) {
            Some(handler) => handler(frame),
            None => u64::MAX,
        },
    };
}
