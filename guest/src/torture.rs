//! The torture workload, modelled on Linux's scftorture: each call draws a
//! primitive from a weighted mix (see [`abi::torture`]): a reschedule IPI,
//! single calls with and without wait, a single call used as an RPC, calls
//! to many and to all CPUs with and without wait. Every callback checks
//! that it runs on a CPU the call was sent to and that memory the caller
//! wrote before the call is visible to it; an RPC's reply is checked by the
//! caller after the wait. Invocations and failed checks are counted per
//! primitive (the invariant checker runs as for every call).

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use abi::torture::{self, COUNT};
use abi::vector;

use crate::cpumask::{nr_cpu_ids, CpuMask};
use crate::{apic, checker, cpu, percpu, smp, syscall};

/// Per-primitive invocations.
pub static INVOCATIONS: [AtomicU64; COUNT] = [const { AtomicU64::new(0) }; COUNT];
/// Per-primitive failed checks.
pub static ERRORS: [AtomicU64; COUNT] = [const { AtomicU64::new(0) }; COUNT];
/// Weights (set by the BSP before the phases; all zero: equal).
pub static WEIGHTS: [AtomicU8; COUNT] = [const { AtomicU8::new(0) }; COUNT];

fn pick(r: u64) -> usize {
    let w: [u64; COUNT] = core::array::from_fn(|i| u64::from(WEIGHTS[i].load(Ordering::Relaxed)));
    let total: u64 = w.iter().sum();
    if total == 0 {
        return (r % COUNT as u64) as usize;
    }
    let mut x = r % total;
    for (i, &wi) in w.iter().enumerate() {
        if x < wi {
            return i;
        }
        x -= wi;
    }
    COUNT - 1
}

/// The reply an RPC target writes.
fn rpc_reply(token: usize, cpu: u32) -> u64 {
    checker::expected_payload(token).unwrap_or(0) ^ u64::from(cpu)
}

fn callback(info: usize) {
    let (token, prim) = (info & 0xffff_ffff, (info >> 32) % COUNT);
    let me = percpu::cpu_id();
    // Checks first: the caller's slot is held until on_callback releases it.
    if !checker::payload_visible(token) || !checker::is_target(token, me) {
        ERRORS[prim].fetch_add(1, Ordering::Relaxed);
    }
    if prim == torture::SINGLE_RPC {
        checker::set_reply(token, rpc_reply(token, me));
    }
    checker::on_callback(token);
}

/// Runs one primitive chosen by weight from `seed` (syscall context,
/// interrupts off on entry and exit).
pub fn one(seed: u64) {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let prim = pick(next());
    let nr = nr_cpu_ids();
    INVOCATIONS[prim].fetch_add(1, Ordering::Relaxed);
    if prim == torture::RESCHED {
        apic::send_ipi((next() % u64::from(nr)) as u32, vector::RESCHEDULE);
        return;
    }
    let wait = matches!(
        prim,
        torture::SINGLE_WAIT | torture::SINGLE_RPC | torture::MANY_WAIT | torture::ALL_WAIT
    );
    let mut targets = CpuMask::new();
    let single = (next() % u64::from(nr)) as u32;
    match prim {
        torture::SINGLE | torture::SINGLE_WAIT | torture::SINGLE_RPC => targets.set(single),
        torture::MANY | torture::MANY_WAIT => {
            for c in 0..nr {
                if next() & 1 == 1 {
                    targets.set(c);
                }
            }
        }
        _ => (0..nr).for_each(|c| targets.set(c)),
    }
    let token = checker::begin(&targets, wait);
    checker::set_payload(token);
    let info = token | (prim << 32);
    let start = cpu::rdtsc();
    // SAFETY: the kernel is set up; cross calls run with interrupts on.
    unsafe { cpu::sti() };
    match prim {
        torture::SINGLE | torture::SINGLE_WAIT | torture::SINGLE_RPC => {
            smp::smp_call_function_single(single, callback, info, wait)
        }
        torture::MANY | torture::MANY_WAIT => {
            // "many" excludes the caller, as smp_call_function_many does;
            // the checker's targets must then exclude it too: run it
            // locally instead so the request stays exactly-once.
            smp::smp_call_function_many_cond(&targets, callback, info, wait, true, None)
        }
        _ => smp::on_each_cpu_cond_mask(&targets, callback, info, wait, None),
    }
    cpu::cli();
    if prim == torture::SINGLE_RPC
        && token != 0
        && checker::reply(token) != Some(rpc_reply(token, single))
    {
        ERRORS[prim].fetch_add(1, Ordering::Relaxed);
    }
    checker::end(token);
    if wait {
        syscall::record_latency(cpu::rdtsc() - start);
    }
}
