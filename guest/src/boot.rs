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
    if crate::pv::steal_registered() {
        crate::pv::enable_steal_time(index);
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
    crate::pv::configure(&control);
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
        if matches!(
            Workload::try_from(control.workload),
            Ok(Workload::Ping | Workload::Shootdown | Workload::Torture)
        ) {
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
    run_late_test_hook(&control, index);
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
        Ok(TestHook::Garbage) => scribble(control),
        Ok(TestHook::ConsoleFlood) => {
            static CHUNK: [u8; 4096] = [b'#'; 4096];
            for _ in 0..abi::FLOOD_BYTES / CHUNK.len() {
                cpu::outsb(Port::Console as u16, &CHUNK);
            }
        }
        Ok(TestHook::HaltEarly) => cpu::halt_forever(),
        Ok(TestHook::BadHypercall) => crate::pv::bad_hypercall(),
        Ok(TestHook::DoneFromAp) if index != 0 => {
            cpu::outl(Port::Status as u16, GuestStatus::Done as u32);
            cpu::halt_forever()
        }
        _ => {}
    }
}

/// The hook that fires on an AP once every vCPU is online: wait until the
/// workload has run for about half its duration, then triple-fault.
fn run_late_test_hook(control: &abi::Control, index: u32) {
    if control.test_hook_vcpu != index || control.test_hook != TestHook::TripleFaultLate as u32 {
        return;
    }
    while online_counter().load(Ordering::Acquire) < control.nr_vcpus {
        cpu::pause();
    }
    let start = cpu::rdtsc();
    let wait = control.tsc_khz.max(1) * (control.duration_us / 2000);
    while cpu::rdtsc().wrapping_sub(start) < wait {
        cpu::pause();
    }
    cpu::triple_fault()
}

/// [`TestHook::Garbage`]: seeded random bytes over the results block (all
/// but its magic, version and online count), every vCPU's status entry and
/// every vCPU's results.
fn scribble(control: &abi::Control) {
    let mut x = control.seed | 1;
    let mut fill = |start: *mut u8, len: usize| {
        let words = start.cast::<u64>();
        for i in 0..len / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
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
