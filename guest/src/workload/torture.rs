//! The torture workload, modelled on Linux's scftorture: each call draws a
//! primitive from a weighted mix (see [`abi::torture`]): a reschedule IPI,
//! single calls with and without wait, a single call used as an RPC, calls
//! to many and to all CPUs with and without wait. Every callback checks
//! that it runs on a CPU the call was sent to and that memory the caller
//! wrote before the call is visible to it; an RPC's reply is checked by the
//! caller after the wait. Half of the calls to many and to all CPUs pass a
//! condition, as Linux's TLB flush passes `tlb_is_not_lazy` to
//! `on_each_cpu_cond_mask()`: it skips about a quarter of the targets, the
//! checker expects callbacks only where it holds, so a callback on a
//! skipped CPU is a failed check. Invocations and failed checks are counted
//! per primitive (the invariant checker runs as for every call).

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use abi::torture::{self, COUNT};
use abi::{syscall, vector, Control};
use guest_lib::cpumask::{nr_cpu_ids, CpuMask};
use guest_lib::rng::{weighted_pick, xorshift64};

use super::checker;
use crate::kernel::arch::{self, TrapFrame};
use crate::kernel::sched::{self, Body, Class};
use crate::kernel::{apic, hotplug, percpu};
use crate::xcall;

use super::calls::{exit, record_latency, single_outcome, sys, think};
use super::phase::{end_tsc, spawn_user_tasks, Spawner};

/// Per-primitive invocations.
static INVOCATIONS: [AtomicU64; COUNT] = [const { AtomicU64::new(0) }; COUNT];
/// Per-primitive failed checks.
static ERRORS: [AtomicU64; COUNT] = [const { AtomicU64::new(0) }; COUNT];
/// Weights (set by the BSP before the phases; all zero: equal).
static WEIGHTS: [AtomicU8; COUNT] = [const { AtomicU8::new(0) }; COUNT];

fn pick(r: u64) -> usize {
    let w: [u64; COUNT] = core::array::from_fn(|i| u64::from(WEIGHTS[i].load(Ordering::Relaxed)));
    weighted_pick(&w, r)
}

/// `info`: the checker's token (bits 0-31), the primitive (32-39) and,
/// for a conditional call, a salt for [`skip_some`] (40-63).
const PRIM_SHIFT: u32 = 32;
const SALT_SHIFT: u32 = 40;

/// The condition of a conditional call: false for about a quarter of the
/// CPUs, chosen by the call's salt (a pure function of `cpu` and `info`,
/// so the caller knows beforehand where it holds).
fn skip_some(cpu: u32, info: usize) -> bool {
    let salt = (info >> SALT_SHIFT) as u32;
    (cpu.wrapping_mul(0x9e37_79b9) ^ salt) & 3 != 0
}

/// The reply an RPC target writes.
fn rpc_reply(token: usize, cpu: u32) -> u64 {
    checker::expected_payload(token).unwrap_or(0) ^ u64::from(cpu)
}

fn callback(info: usize) {
    let (token, prim) = (info & 0xffff_ffff, ((info >> PRIM_SHIFT) & 0xff) % COUNT);
    let me = percpu::cpu_id();
    let cond_holds = info >> SALT_SHIFT == 0 || skip_some(me, info);
    // Checks first: the caller's slot is held until on_callback releases it.
    if !checker::payload_visible(token) || !checker::is_target(token, me) || !cond_holds {
        ERRORS[prim].fetch_add(1, Ordering::Relaxed);
    }
    if prim == torture::SINGLE_RPC {
        checker::set_reply(token, rpc_reply(token, me));
    }
    checker::on_callback(token);
}

/// Takes the primitives' weights from the control block (BSP, at boot).
pub fn configure(control: &Control) {
    for (w, &v) in WEIGHTS.iter().zip(control.torture_weights.iter()) {
        w.store(v, Ordering::Relaxed);
    }
}

/// Spawns the phase's tasks.
pub fn spawn(control: &Control, sp: &mut Spawner) {
    spawn_user_tasks(control, sp, "torturer", torturer);
}

/// Torture's onoff mode (scftorture's `onoff_interval`): a kernel task on
/// the boot vCPU that, every interval, takes a random other vCPU offline
/// and brings it back half an interval later, until the phase ends.
pub fn spawn_onoff(control: &Control, sp: &mut Spawner) {
    let arg = (control.onoff_interval_us as usize) << 32 | (control.seed as u32 as usize);
    sp.spawn("onoff", Class::Normal, Body::Kernel(onoff, arg), 0, true);
}

fn onoff(arg: usize) {
    let interval = (arg >> 32) as u64;
    let mut x = (arg as u64 & 0xffff_ffff) | 1;
    let nr = nr_cpu_ids();
    if nr < 3 {
        return; // two must stay online: nothing to take down
    }
    while arch::rdtsc() < end_tsc() {
        sched::sleep_us(interval);
        x = xorshift64(x);
        let cpu = 1 + (x % u64::from(nr - 1)) as u32;
        hotplug::request(cpu, true);
        sched::sleep_us(interval / 2);
        hotplug::request(cpu, false);
    }
}

/// The TORTURE system call: one primitive, drawn by weight (rdi seeds the
/// draws). Returns the phase's end.
pub fn sys_torture(frame: &mut TrapFrame) -> u64 {
    one(frame.rdi);
    end_tsc()
}

/// Runs one primitive chosen by weight from `seed` (syscall context,
/// interrupts off on entry and exit).
fn one(seed: u64) {
    let mut x = seed | 1;
    let mut next = || {
        x = xorshift64(x);
        x
    };
    let prim = pick(next());
    let nr = nr_cpu_ids();
    INVOCATIONS[prim].fetch_add(1, Ordering::Relaxed);
    if prim == torture::RESCHED {
        // Linux warns on a reschedule IPI to an offline CPU: skip those.
        let cpu = (next() % u64::from(nr)) as u32;
        if hotplug::cpu_online(cpu) {
            apic::send_ipi(cpu, vector::RESCHEDULE);
        }
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
    let many = !matches!(
        prim,
        torture::SINGLE | torture::SINGLE_WAIT | torture::SINGLE_RPC
    );
    // A non-zero salt marks a conditional call (bits 40-63 of info).
    let salt = if many && next() & 1 == 1 {
        (next() as usize >> SALT_SHIFT).max(1) << SALT_SHIFT
    } else {
        0
    };
    let cond: Option<xcall::CondFn> = (salt != 0).then_some(skip_some as xcall::CondFn);
    // The call gets every target and the condition; the checker expects
    // callbacks exactly where the condition holds.
    let mut expected = targets;
    if salt != 0 {
        for c in 0..nr {
            if targets.test(c) && !skip_some(c, salt) {
                expected.clear(c);
            }
        }
    }
    let token = checker::begin(&expected, wait);
    checker::set_payload(token);
    let info = token | (prim << PRIM_SHIFT) | salt;
    checker::expect_return(token, info);
    let start = arch::rdtsc();
    // SAFETY: the kernel is set up; cross calls run with interrupts on.
    unsafe { arch::irq_enable() };
    let skipped = match prim {
        torture::SINGLE | torture::SINGLE_WAIT | torture::SINGLE_RPC => single_outcome(
            xcall::smp_call_function_single(single, callback, info, wait),
            single,
        ),
        torture::MANY | torture::MANY_WAIT => {
            // "many" excludes the caller, as smp_call_function_many does;
            // the checker's targets must then exclude it too: run it
            // locally instead so the request stays exactly-once.
            xcall::smp_call_function_many_cond(&targets, callback, info, wait, true, cond)
        }
        _ => xcall::on_each_cpu_cond_mask(&targets, callback, info, wait, cond),
    };
    arch::irq_disable();
    checker::skip(token, &skipped);
    if prim == torture::SINGLE_RPC
        && !skipped.test(single)
        && token != 0
        && checker::reply(token) != Some(rpc_reply(token, single))
    {
        ERRORS[prim].fetch_add(1, Ordering::Relaxed);
    }
    checker::end(token);
    if wait {
        record_latency(arch::rdtsc() - start);
    }
}

/// The task: one weighted primitive per call, until the phase ends.
extern "C" fn torturer(seed: usize) -> ! {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut end = u64::MAX;
    while arch::rdtsc() < end {
        x = xorshift64(x);
        think(2_000 + x % 20_000);
        end = sys(syscall::TORTURE, x);
    }
    exit()
}

/// Writes the per-primitive counts (over all phases so far) into the results.
pub fn write_results(r: &mut abi::Results) {
    for (t, (inv, err)) in r.torture.iter_mut().zip(INVOCATIONS.iter().zip(&ERRORS)) {
        t.invocations = inv.load(Ordering::Relaxed);
        t.errors = err.load(Ordering::Relaxed);
    }
}
