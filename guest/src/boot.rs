//! Entry of every vCPU. The VMM starts each vCPU directly in 64-bit mode at
//! `_start` with paging on (identity map), interrupts off, `rdi` = vCPU
//! index and `rsp` = its boot stack ([`abi::layout::boot_stack_top`]).
//!
//! vCPU 0 (the BSP) checks the control block, sets up what all CPUs share
//! (heap, IDT, scheduler parameters) and its own CPU, then asks the VMM to
//! start the APs (`StartAps`: the APs never spin in emulated code waiting
//! for it). Each AP sets up its CPU, marks itself online and becomes its
//! CPU's idle task; the last one wakes the BSP, which reports `AllOnline`,
//! calibrates, runs the workload and reports `Done`.

use core::ptr::addr_of_mut;
use core::sync::atomic::Ordering;

use abi::{layout, vcpu_state, GuestStatus, Port, TestHook, Workload, ABI_VERSION, RESULTS_MAGIC};

use crate::console::println;
use crate::fmt::{Dec, Hex};
use crate::{apic, cpu, heap, percpu, sched, shared, spin, trap, workload};

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

fn online_counter() -> &'static core::sync::atomic::AtomicU32 {
    // SAFETY: an aligned u32 field of the shared page.
    unsafe { shared::atomic_u32(addr_of_mut!((*shared::results()).nr_online)) }
}

/// Marks vCPU `index` online; the last one wakes the BSP.
fn come_online(index: u32, nr_vcpus: u32) {
    let status = shared::vcpu(index);
    // SAFETY: `status` points into the shared page; this vCPU is the only
    // writer of its own entry.
    unsafe {
        (*status).apic_id = cpu::x2apic_id();
        (*status).online_tsc = cpu::rdtsc();
        shared::atomic_u32(addr_of_mut!((*status).state))
            .store(vcpu_state::ONLINE, Ordering::Release);
    }
    // Release: this vCPU's status entry before the count the BSP reads.
    let now = online_counter().fetch_add(1, Ordering::Release) + 1;
    if now == nr_vcpus && index != 0 {
        apic::send_ipi(0, abi::vector::RESCHEDULE);
    }
}

/// Per-CPU set-up, on the CPU itself.
fn init_cpu(index: u32, seed: u64) {
    percpu::init(index);
    trap::init_cpu();
    apic::init();
    percpu::seed(seed);
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
    heap::init(layout::FREE_MEM_ADDR, control.mem_size);
    trap::init_idt();
    let cycles_per_us = (control.tsc_khz / 1000).max(1);
    sched::PARAMS
        .cycles_per_us
        .store(cycles_per_us, Ordering::Relaxed);
    sched::PARAMS
        .nr_cpus
        .store(control.nr_vcpus, Ordering::Relaxed);
    sched::PARAMS
        .forced_migration
        .store(control.forced_migration, Ordering::Relaxed);
    // A provisional tick until the calibration picks the real one.
    sched::PARAMS
        .tick_cycles
        .store(cycles_per_us * 10_000, Ordering::Relaxed);
    crate::cpumask::set_nr_cpu_ids(control.nr_vcpus);
    init_cpu(0, control.seed);
    sched::start_cpu(true);
    cpu::outl(Port::Status as u16, GuestStatus::StartAps as u32);
    come_online(0, control.nr_vcpus);

    // Sleep until the last AP's IPI (no emulated spinning).
    loop {
        cpu::cli();
        if online_counter().load(Ordering::Acquire) >= control.nr_vcpus {
            break;
        }
        // SAFETY: IDT, APIC and scheduler are set up on this CPU.
        unsafe { cpu::sti_hlt() };
    }
    // SAFETY: BSP-only field.
    unsafe { (*results).all_online_tsc = cpu::rdtsc() };
    cpu::outl(Port::Status as u16, GuestStatus::AllOnline as u32);
    run_test_hook(&control, 0);
    if control.workload == Workload::Spin as u32 {
        spin::run(&control, 0);
        spin::wait_all(control.nr_vcpus);
    }
    // SAFETY: the scheduler runs from here on.
    unsafe { cpu::sti() };

    let scheduled =
        control.workload != Workload::None as u32 && control.workload != Workload::Spin as u32;
    if scheduled || control.test_hook == TestHook::UserFault as u32 {
        let tick_hz = workload::calibrate(&control);
        sched::PARAMS.tick_cycles.store(
            control.tsc_khz * 1000 / u64::from(tick_hz),
            Ordering::Relaxed,
        );
        workload::start_test_hook_task(&control);
        crate::floor::run(&control); // floor and ping only
        if control.workload == Workload::Ping as u32
            || control.workload == Workload::Shootdown as u32
        {
            workload::run_designs(&control);
        } else if control.workload != Workload::Floor as u32 {
            workload::run(&control);
        }
    }
    cpu::cli();
    workload::write_counters(control.nr_vcpus);
    // SAFETY: BSP-only fields of the shared page; the magic is written last
    // (Release) so the VMM never sees a half-written block as complete.
    unsafe {
        if control.test_hook == TestHook::BadOnlineCount as u32 {
            online_counter().store(control.nr_vcpus + 100, Ordering::Relaxed);
        }
        let magic = if control.test_hook == TestHook::BadResultsMagic as u32 {
            0xbad_c0de
        } else {
            RESULTS_MAGIC
        };
        shared::atomic_u64(addr_of_mut!((*results).magic)).store(magic, Ordering::Release);
    }
    cpu::outl(Port::Status as u16, GuestStatus::Done as u32);
    cpu::halt_forever()
}

fn ap_main(index: u32) -> ! {
    let control = shared::control();
    // Hooks fire before the AP counts itself online, so the BSP can never
    // report Done ahead of the failure it is meant to expose.
    run_test_hook(&control, index);
    init_cpu(index, control.seed);
    sched::start_cpu(false);
    come_online(index, control.nr_vcpus);
    if control.workload == Workload::Spin as u32 {
        // Spin (interrupts still off) only once every vCPU is online.
        while online_counter().load(Ordering::Acquire) < control.nr_vcpus {
            cpu::pause();
        }
        spin::run(&control, index);
    }
    sched::idle_loop()
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
