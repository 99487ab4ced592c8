//! Workload `shootdown`: `issuers_per_cpu` user tasks per initiator vCPU
//! (beside the phase's hogs), each thinking at CPL3 for a random time,
//! then making a TLB-shootdown-like cross call (`on_each_cpu_cond_mask()`
//! to a random subset of vCPUs, waiting; or
//! flush-defer's `kvm_flush_tlb_multi()` path when that PV feature is on),
//! and every eighth call an asynchronous single call instead.

use abi::{pv, syscall, Control};
use guest_lib::cpumask::{nr_cpu_ids, CpuMask};
use guest_lib::rng::xorshift64;

use crate::kernel::arch::{self, TrapFrame};
use crate::xcall;

use super::calls::{checked_call, exit, flush_callback, single_outcome, sys, think};
use super::phase::{end_tsc, spawn_user_tasks, Spawner};

/// Spawns the phase's tasks.
pub fn spawn(control: &Control, sp: &mut Spawner) {
    spawn_user_tasks(control, sp, "shooter", shooter);
}

/// The SHOOTDOWN system call: `on_each_cpu_cond_mask()` to a random subset
/// of vCPUs (rdi seeds it), waiting. Returns the phase's end.
pub fn sys_shootdown(frame: &mut TrapFrame) -> u64 {
    let nr = nr_cpu_ids();
    let mut targets = CpuMask::new();
    let mut x = frame.rdi | 1;
    for c in 0..nr {
        x = xorshift64(x);
        if x & 1 == 1 {
            targets.set(c);
        }
    }
    if targets.weight() == 0 {
        targets.set((x % u64::from(nr)) as u32);
    }
    if xcall::pv::enabled(pv::FLUSH_DEFER) {
        checked_call(&targets, true, |token| {
            xcall::flush_tlb_multi(&targets, flush_callback, token)
        });
    } else {
        checked_call(&targets, true, |token| {
            xcall::on_each_cpu_cond_mask(&targets, flush_callback, token, true, None)
        });
    }
    end_tsc()
}

/// The ASYNC_CALL system call: an asynchronous single-target call to a
/// random vCPU (rdi seeds it). Returns the phase's end.
pub fn sys_async_call(frame: &mut TrapFrame) -> u64 {
    let target = (xorshift64(frame.rdi | 1) % u64::from(nr_cpu_ids())) as u32;
    let mut targets = CpuMask::new();
    targets.set(target);
    checked_call(&targets, false, |token| {
        single_outcome(
            xcall::smp_call_function_single(target, flush_callback, token, false),
            target,
        )
    });
    end_tsc()
}

/// The task: random think time at CPL3, then a call, until the phase ends.
extern "C" fn shooter(seed: usize) -> ! {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut n = 0u64;
    let mut end = u64::MAX;
    while arch::rdtsc() < end {
        x = xorshift64(x);
        think(10_000 + x % 190_000);
        // Each call returns the end of the phase (it may move once, when
        // the phase's clock starts).
        end = if n.is_multiple_of(8) && n > 0 {
            sys(syscall::ASYNC_CALL, x)
        } else {
            sys(syscall::SHOOTDOWN, x)
        };
        n += 1;
    }
    exit()
}
