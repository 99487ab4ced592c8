//! The platform calibration: how fast kernel (CPL0) and user (CPL3) code
//! run here, which tells whether guest kernel code is emulated (nested PVM
//! hosts) or runs on the hardware, and picks the tick rate and the probe
//! period to match.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::{syscall, verdict, Control};

use crate::kernel::arch::{self, TrapFrame};
use crate::kernel::console::println;
use crate::kernel::fmt::Dec;
use crate::kernel::sched::{self, Body, Class};
use crate::kernel::{apic, shared, trace};

use super::calls::{exit, sys};
use super::probe;

/// The CPL3 calibration result (cycles per 1024 iterations; 0: not yet).
static CPL3_CYCLES: AtomicU64 = AtomicU64::new(0);
/// The best system call round trip the CPL3 task measured.
static SYSCALL_CYCLES: AtomicU64 = AtomicU64::new(0);

/// The CALIBRATION system call: the CPL3 task reports its results, the
/// loop's cycles in the low half of rdi and the system call's in the high.
pub fn sys_calibration(frame: &mut TrapFrame) -> u64 {
    SYSCALL_CYCLES.store(frame.rdi >> 32, Ordering::Relaxed);
    CPL3_CYCLES.store(frame.rdi & 0xffff_ffff, Ordering::Relaxed);
    0
}

/// Measures CPL0 and CPL3 speed, picks the tick rate, records both.
pub fn calibrate(control: &Control) -> u32 {
    let cpl0 = arch::kernel_loop_cycles();
    let live_before = sched::live_tasks();
    if let Err(e) = sched::spawn(
        "calibrate",
        Class::Normal,
        Body::User(cpl3_task, 0),
        0,
        true,
    ) {
        panic!("cannot create the calibration task: {:?}", e);
    }
    let give_up =
        arch::rdtsc() + 2_000 * sched::PARAMS.cycles_per_us.load(Ordering::Relaxed) * 1000;
    while CPL3_CYCLES.load(Ordering::Relaxed) == 0 && arch::rdtsc() < give_up {
        sched::sleep_us(1000);
    }
    // The task reports before it exits: wait until it is gone too, so that
    // the workload's "all my tasks exited" accounting starts from a quiet
    // scheduler (a late free would end a phase's wait one task early).
    while sched::live_tasks() > live_before && arch::rdtsc() < give_up {
        sched::sleep_us(1000);
    }
    let cpl3 = CPL3_CYCLES.load(Ordering::Relaxed);
    let emulated = cpl0 > arch::EMULATED_THRESHOLD;
    let v = if emulated {
        verdict::CPL0_EMULATED
    } else {
        verdict::HARDWARE
    };
    let tick_hz = match control.tick_hz {
        0 if emulated => 100,
        0 => 1000,
        hz => hz,
    };
    let (icr, eoi) = apic::measure_write_costs();
    let (pair, traced) = (
        trace::pair_cycles(false, emulated),
        trace::pair_cycles(true, emulated),
    );
    let r = shared::results();
    // SAFETY: BSP-only fields of the shared page.
    unsafe {
        (*r).cpl0_cycles_per_kiter = cpl0;
        (*r).cpl3_cycles_per_kiter = cpl3;
        (*r).verdict = v;
        (*r).tick_hz = tick_hz;
        (*r).trap_cycles = SYSCALL_CYCLES.load(Ordering::Relaxed);
        (*r).icr_cycles = icr;
        (*r).eoi_cycles = eoi;
        (*r).preempt_pair_cycles = pair;
        (*r).preempt_pair_traced_cycles = traced;
    }
    println!(
        "calibration: CPL0 {} cycles/1024 iter, CPL3 {} cycles/1024 iter, system call {}, ICR {}, EOI {} cycles: {}",
        Dec(cpl0),
        Dec(cpl3),
        Dec(SYSCALL_CYCLES.load(Ordering::Relaxed)),
        Dec(icr),
        Dec(eoi),
        if emulated {
            "CPL0 emulated: absolute latencies are not representative"
        } else {
            "hardware-accelerated"
        }
    );
    // Where kernel code is emulated every probe wake-up costs about half a
    // millisecond of host CPU: 10 ms per 8 vCPUs keeps the probes of a large
    // guest from saturating the host.
    let probe_us = match control.probe_period_us {
        0 if emulated => 10_000 * u64::from(control.nr_vcpus.div_ceil(8)),
        0 => 1_000,
        us => u64::from(us),
    };
    probe::PERIOD.store(
        probe_us * sched::PARAMS.cycles_per_us.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    tick_hz
}

/// CPL3 calibration: times 1024 x `dec; jnz` and one system call round
/// trip (GETCPU) many times, reports the best of each.
extern "C" fn cpl3_task(_: usize) -> ! {
    let (mut best, mut call) = (u64::MAX, u64::MAX);
    for _ in 0..64 {
        let t0 = arch::rdtsc();
        // SAFETY: a register-only loop.
        unsafe {
            asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) 1024u64 => _, options(nomem, nostack))
        };
        let t1 = arch::rdtsc();
        sys(syscall::GETCPU, 0);
        let t2 = arch::rdtsc();
        best = best.min(t1 - t0);
        call = call.min(t2 - t1);
    }
    let clamp = |x: u64| x.min(u64::from(u32::MAX));
    sys(syscall::CALIBRATION, clamp(best) | clamp(call) << 32);
    exit()
}
