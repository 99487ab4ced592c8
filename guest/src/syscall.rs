//! System calls from user tasks: number in rax, argument in rdi, result in
//! rax (see [`abi::syscall`]). They arrive as a user `ud2` (see
//! crate::trap), run with interrupts off on the task's kernel stack and
//! return with `iretq`.

use core::sync::atomic::Ordering;

use abi::syscall;

use crate::trap::TrapFrame;
use crate::{percpu, sched, workload};

/// Handles the system call in `frame`.
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
        syscall::CALIBRATION => {
            workload::CPL3_CYCLES.store(frame.rdi, Ordering::Relaxed);
            0
        }
        syscall::WORKLOAD_END => workload::END_TSC.load(Ordering::Relaxed),
        _ => u64::MAX,
    };
}
