//! Entry of every vCPU. The VMM starts each vCPU directly in 64-bit mode at
//! `_start` with paging on (identity map), interrupts off, `rdi` = vCPU
//! index and `rsp` = its boot stack ([`abi::layout::boot_stack_top`]).
//!
//! vCPU 0 (the BSP) checks the control block, waits for every other vCPU
//! (AP) to come online, writes the results and reports `Done`; APs mark
//! themselves online and halt.

use core::sync::atomic::Ordering;

use abi::{vcpu_state, GuestStatus, Port, TestHook, Workload, ABI_VERSION, RESULTS_MAGIC};

use crate::console::println;
use crate::fmt::{Dec, Hex};
use crate::{cpu, shared, spin};

// SSE must be on before any Rust code runs: the prebuilt `core` uses SSE
// registers freely (the VMM already sets these bits; setting them here
// keeps the guest correct on any loader).
core::arch::global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    // CR0: clear EM (bit 2, x87 emulation), set MP (bit 1).
    "mov rax, cr0",
    "and rax, ~4",
    "or rax, 2",
    "mov cr0, rax",
    // CR4: OSFXSR (bit 9) | OSXMMEXCPT (bit 10).
    "mov rax, cr4",
    "or rax, 0x600",
    "mov cr4, rax",
    // The SysV ABI wants rsp 16-byte aligned at the call.
    "and rsp, -16",
    "xor ebp, ebp",
    "call {entry}",
    "2: cli",
    "hlt",
    "jmp 2b",
    entry = sym rust_entry,
);

extern "C" fn rust_entry(index: u32) -> ! {
    if index == 0 {
        bsp_main()
    } else {
        ap_main(index)
    }
}

/// Marks vCPU `index` online and counts it.
fn come_online(index: u32) {
    let status = shared::vcpu(index);
    // SAFETY: `status` points into the shared page; this vCPU is the only
    // writer of its own entry; the counter is updated atomically by all.
    unsafe {
        (*status).apic_id = cpu::x2apic_id();
        (*status).online_tsc = cpu::rdtsc();
        shared::atomic_u32(core::ptr::addr_of_mut!((*status).state))
            .store(vcpu_state::ONLINE, Ordering::Release);
        // Release: this vCPU's status entry before the count the BSP polls.
        shared::atomic_u32(core::ptr::addr_of_mut!((*shared::results()).nr_online))
            .fetch_add(1, Ordering::Release);
    }
}

fn bsp_main() -> ! {
    let boot_tsc = cpu::rdtsc();
    let control = shared::control();
    if let Err(e) = control.validate() {
        // FieldError's Display uses core's hex formatting: print it by hand.
        panic!(
            "bad control block: {} = {}, expected {}",
            e.field,
            Hex(e.found),
            e.expected
        );
    }
    let results = shared::results();
    // SAFETY: `results` points into the shared page; only the BSP writes
    // these fields, and APs only touch `nr_online` (atomically).
    unsafe {
        (*results).abi_version = ABI_VERSION;
        (*results).boot_tsc = boot_tsc;
    }
    println!(
        "ipivirt guest: abi v{}, {} vCPUs, x2APIC id {}",
        Dec(ABI_VERSION),
        Dec(control.nr_vcpus),
        Dec(cpu::x2apic_id())
    );
    come_online(0);

    // SAFETY: an aligned u32 field of the shared page.
    let online = unsafe { shared::atomic_u32(core::ptr::addr_of_mut!((*results).nr_online)) };
    // Acquire: pairs with the Release increments in `come_online`.
    while online.load(Ordering::Acquire) < control.nr_vcpus {
        cpu::pause();
    }
    // SAFETY: as above, BSP-only field.
    unsafe { (*results).all_online_tsc = cpu::rdtsc() };
    cpu::outl(Port::Status as u16, GuestStatus::AllOnline as u32);

    run_test_hook(&control, 0);
    if control.workload == Workload::Spin as u32 {
        spin::run(&control, 0);
        spin::wait_all(control.nr_vcpus);
    }
    // SAFETY: BSP-only fields of the shared page; the magic is written last
    // (Release) so the VMM never sees a half-written block as complete.
    unsafe {
        if control.test_hook == TestHook::BadOnlineCount as u32 {
            online.store(control.nr_vcpus + 100, Ordering::Relaxed);
        }
        let magic = if control.test_hook == TestHook::BadResultsMagic as u32 {
            0xbad_c0de
        } else {
            RESULTS_MAGIC
        };
        shared::atomic_u64(core::ptr::addr_of_mut!((*results).magic))
            .store(magic, Ordering::Release);
    }
    cpu::outl(Port::Status as u16, GuestStatus::Done as u32);
    cpu::halt_forever()
}

fn ap_main(index: u32) -> ! {
    // Hooks fire before the AP counts itself online, so the BSP can never
    // report Done ahead of the failure it is meant to expose.
    let control = shared::control();
    run_test_hook(&control, index);
    come_online(index);
    if control.workload == Workload::Spin as u32 {
        // Spin only once every vCPU is online, like the BSP.
        // SAFETY: an aligned u32 field of the shared page.
        let online =
            unsafe { shared::atomic_u32(core::ptr::addr_of_mut!((*shared::results()).nr_online)) };
        while online.load(Ordering::Acquire) < control.nr_vcpus {
            cpu::pause();
        }
        spin::run(&control, index);
    }
    cpu::halt_forever()
}

/// Fires the failure hooks that act on a vCPU, if this is the hooked one.
fn run_test_hook(control: &abi::Control, index: u32) {
    if control.test_hook_vcpu != index {
        return;
    }
    match TestHook::try_from(control.test_hook) {
        Ok(TestHook::Panic) => panic!("test hook: panic requested on vCPU {}", Dec(index)),
        Ok(TestHook::TripleFault) => cpu::triple_fault(),
        Ok(TestHook::Hang) => loop {
            cpu::pause();
        },
        _ => {}
    }
}
