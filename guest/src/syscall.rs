//! System calls from user tasks: number in rax, argument in rdi, result in
//! rax (see [`abi::syscall`]). They arrive as a user `ud2` (see
//! crate::trap), run on the task's kernel stack (interrupts off except
//! inside the cross calls, which need them on) and return with `iretq`.

use core::ptr::addr_of_mut;
use core::sync::atomic::Ordering;

use abi::{layout, syscall, VcpuResults};

use crate::cpumask::{nr_cpu_ids, CpuMask};
use crate::trap::TrapFrame;
use crate::{checker, cpu, percpu, sched, smp, workload};

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
        syscall::SHOOTDOWN => {
            shootdown(frame.rdi);
            workload::END_TSC.load(Ordering::Relaxed)
        }
        syscall::PING => {
            ping();
            workload::END_TSC.load(Ordering::Relaxed)
        }
        syscall::ASYNC_CALL => {
            async_call(frame.rdi);
            workload::END_TSC.load(Ordering::Relaxed)
        }
        syscall::TORTURE => {
            crate::torture::one(frame.rdi);
            workload::END_TSC.load(Ordering::Relaxed)
        }
        _ => u64::MAX,
    };
}

/// The callback of every workload call: tell the checker it ran here.
fn flush_callback(token: usize) {
    checker::on_callback(token);
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

/// Records a call's latency on the CPU the caller returned on.
pub fn record_latency(cycles: u64) {
    let irq = cpu::irq_save();
    let r = layout::vcpu_results_addr(percpu::cpu_id()) as *mut VcpuResults;
    // SAFETY: this CPU's results slot; with interrupts off no other task
    // on this CPU can record at the same time, and only this CPU's tasks
    // record into it during a phase.
    unsafe { (*addr_of_mut!((*r).calls)).record(cycles) };
    cpu::irq_restore(irq);
}

/// Runs a cross call with interrupts on (a waiter must service
/// incoming calls), bracketed by the checker.
pub fn checked_call(targets: &CpuMask, wait: bool, call: impl FnOnce(usize)) -> usize {
    let token = checker::begin(targets, wait);
    let start = cpu::rdtsc();
    // SAFETY: the kernel is fully set up; cross calls run with interrupts on.
    unsafe { cpu::sti() };
    call(token);
    cpu::cli();
    checker::end(token);
    if wait {
        record_latency(cpu::rdtsc() - start);
    }
    token
}

/// `on_each_cpu_cond_mask()` to a random subset of vCPUs, waiting.
fn shootdown(seed: u64) {
    let nr = nr_cpu_ids();
    let mut targets = CpuMask::new();
    let mut x = seed | 1;
    for c in 0..nr {
        x = xorshift(x);
        if x & 1 == 1 {
            targets.set(c);
        }
    }
    if targets.weight() == 0 {
        targets.set((x % u64::from(nr)) as u32);
    }
    if crate::pv::enabled(abi::pv::FLUSH_DEFER) {
        checked_call(&targets, true, |token| {
            smp::flush_tlb_multi(&targets, flush_callback, token)
        });
    } else {
        checked_call(&targets, true, |token| {
            smp::on_each_cpu_cond_mask(&targets, flush_callback, token, true, None)
        });
    }
}

/// A synchronous single-target call to the next vCPU.
fn ping() {
    let target = (percpu::cpu_id() + 1) % nr_cpu_ids();
    let mut targets = CpuMask::new();
    targets.set(target);
    checked_call(&targets, true, |token| {
        smp::smp_call_function_single(target, flush_callback, token, true)
    });
}

/// An asynchronous single-target call to a random vCPU.
fn async_call(seed: u64) {
    let target = (xorshift(seed | 1) % u64::from(nr_cpu_ids())) as u32;
    let mut targets = CpuMask::new();
    targets.set(target);
    checked_call(&targets, false, |token| {
        smp::smp_call_function_single(target, flush_callback, token, false)
    });
}
