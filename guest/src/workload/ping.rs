//! Workload `ping`: one user task per vCPU making synchronous single-target
//! calls to the next vCPU (`smp_call_function_single(wait)`), with a short
//! think time. Its latency is compared with the raw IPI floor measured
//! first in the same run ([`super::floor`]).

use abi::{syscall, Control};
use guest_lib::cpumask::{nr_cpu_ids, CpuMask};

use crate::kernel::arch::{self, TrapFrame};
use crate::kernel::percpu;
use crate::kernel::sched::{Body, Class};
use crate::xcall;

use super::calls::{checked_call, exit, flush_callback, single_outcome, sys, think};
use super::phase::{end_tsc, Spawner};

/// Spawns the phase's tasks: one per vCPU, whatever the shape (the ping
/// is compared with the raw IPI floor, which a hog or a second issuer
/// sharing its vCPU would blur).
pub fn spawn(control: &Control, sp: &mut Spawner) {
    for c in 0..control.nr_vcpus {
        if sp.spawn(
            "pinger",
            Class::Normal,
            Body::User(pinger, c as usize),
            c,
            false,
        ) {
            sp.shape.issuers += 1;
        }
    }
}

/// The PING system call: a synchronous single-target call to the next
/// vCPU. Returns the phase's end.
pub fn sys_ping(_: &mut TrapFrame) -> u64 {
    let target = (percpu::cpu_id() + 1) % nr_cpu_ids();
    let mut targets = CpuMask::new();
    targets.set(target);
    checked_call(&targets, true, |token| {
        single_outcome(
            xcall::smp_call_function_single(target, flush_callback, token, true),
            target,
        )
    });
    end_tsc()
}

/// The task: calls until the phase ends.
extern "C" fn pinger(_: usize) -> ! {
    let mut end = u64::MAX;
    while arch::rdtsc() < end {
        end = sys(syscall::PING, 0);
        think(5_000);
    }
    exit()
}
