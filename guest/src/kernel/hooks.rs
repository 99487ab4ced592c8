//! The failure test hooks that act on one vCPU ([`abi::TestHook`]): a
//! panic, a triple fault, a hang, garbage in the shared page, a console
//! flood, an early halt, a bad hypercall, `Done` from an AP, and a late
//! triple fault. The VMM's tests use them to show that each failure ends
//! with the right exit code and message. (The hooks that concern the
//! experiment, a faulting user task and a broken checker, are the
//! workload's and the checker's.)

use abi::{layout, Control, GuestStatus, Port, TestHook};

use guest_lib::rng::xorshift64;

use crate::kernel::fmt::Dec;
use crate::kernel::{arch, pv, shared};

/// Fires the failure hooks that act on a vCPU, if this is the hooked one.
pub fn on_vcpu(control: &Control, index: u32) {
    if control.test_hook_vcpu != index {
        return;
    }
    match TestHook::try_from(control.test_hook) {
        Ok(TestHook::Panic) => panic!("test hook: panic requested on vCPU {}", Dec(index)),
        Ok(TestHook::TripleFault) => arch::triple_fault(),
        Ok(TestHook::Hang) => loop {
            arch::pause();
        },
        Ok(TestHook::Garbage) => scribble(control),
        Ok(TestHook::ConsoleFlood) => {
            static CHUNK: [u8; 4096] = [b'#'; 4096];
            for _ in 0..abi::FLOOD_BYTES / CHUNK.len() {
                arch::console_write(&CHUNK);
            }
        }
        Ok(TestHook::HaltEarly) => arch::halt_forever(),
        Ok(TestHook::BadHypercall) => pv::bad_hypercall(),
        Ok(TestHook::DoneFromAp) if index != 0 => {
            arch::outl(Port::Status as u16, GuestStatus::Done as u32);
            arch::halt_forever()
        }
        _ => {}
    }
}

/// The hook that fires on an AP once every vCPU is online: wait until the
/// workload has run for about half its duration, then triple-fault.
pub fn late_on_vcpu(control: &Control, index: u32, all_online: impl Fn() -> bool) {
    if control.test_hook_vcpu != index || control.test_hook != TestHook::TripleFaultLate as u32 {
        return;
    }
    while !all_online() {
        arch::pause();
    }
    let start = arch::rdtsc();
    let wait = control.tsc_khz.max(1) * (control.duration_us / 2000);
    while arch::rdtsc().wrapping_sub(start) < wait {
        arch::pause();
    }
    arch::triple_fault()
}

/// [`TestHook::Garbage`]: seeded random bytes over the results block (all
/// but its magic, version and online count), every vCPU's status entry and
/// every vCPU's results.
fn scribble(control: &Control) {
    let mut x = control.seed | 1;
    let mut fill = |start: *mut u8, len: usize| {
        let words = start.cast::<u64>();
        for i in 0..len / 8 {
            x = xorshift64(x);
            // SAFETY: callers pass 8-byte aligned areas of the shared page
            // or of the per-vCPU results that this guest owns; nothing else
            // reads them until the VMM copies them out (the BSP is the only
            // writer left at this point).
            unsafe { words.add(i).write_volatile(x) };
        }
    };
    let nr = control.nr_vcpus as usize;
    // Results is 8-byte aligned; bytes 0..16 are magic, version, nr_online.
    // SAFETY: offset 16 is inside the results block.
    let results = unsafe { shared::results().cast::<u8>().add(16) };
    fill(results, core::mem::size_of::<abi::Results>() - 16);
    fill(
        shared::vcpu(0).cast(),
        nr * core::mem::size_of::<abi::VcpuStatus>(),
    );
    fill(
        layout::vcpu_results_addr(0) as *mut u8,
        nr * core::mem::size_of::<abi::VcpuResults>(),
    );
}
