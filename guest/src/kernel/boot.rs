//! Entry of every vCPU. The VMM starts each vCPU directly in 64-bit mode at
//! `_start` with paging on (identity map), interrupts off, `rdi` = vCPU
//! index and `rsp` = its boot stack ([`abi::layout::boot_stack_top`]).
//!
//! vCPU 0 (the BSP) checks the control block, sets up what all CPUs share
//! (heap, IDT, scheduler parameters) and its own CPU, lets the
//! [`Program`] register what it plugs into the kernel, then asks the VMM to
//! start the APs (`StartAps`: the APs never spin in emulated code waiting
//! for it). Each AP sets up its CPU, marks itself online and becomes its
//! CPU's idle task; the last one wakes the BSP, which reports `AllOnline`,
//! runs the program, writes the counters and reports `Done`.

use core::ptr::addr_of_mut;
use core::sync::atomic::Ordering;

use abi::{
    guest_mode, layout, native_error, vcpu_state, Control, GuestStatus, Port, TestHook,
    ABI_VERSION, RESULTS_MAGIC,
};

use crate::kernel::console::println;
use crate::kernel::fmt::{Dec, Hex};
use crate::kernel::{apic, arch, heap, hooks, hotplug, percpu, pv, sched, shared, trap};

/// What runs on top of the kernel: the layers above hand it to
/// [`entry_point!`], which is how the kernel reaches them without importing
/// them.
pub struct Program {
    /// BSP, once the kernel is set up, before any AP starts and before any
    /// task exists (interrupts off): register interrupt handlers, task hooks
    /// and system calls; take the settings of the control block.
    pub init: fn(&Control),
    /// BSP, once every vCPU is online (interrupts off): the experiment.
    /// Returns, with interrupts off, when it is over.
    pub bsp: fn(&Control),
    /// Each AP, once online (interrupts off), before it becomes its CPU's
    /// idle task.
    pub ap: fn(&Control, u32),
}

/// Defines the image's entry point `_start`, which runs `program` (a
/// [`Program`]) on every vCPU.
macro_rules! entry_point {
    ($program:path) => {
        extern "C" fn __ipivirt_entry(index: u32) -> ! {
            $crate::kernel::boot::start(index, &$program)
        }
        // SSE must be on before any Rust code runs: the prebuilt `core` uses
        // SSE registers freely (the VMM already sets these bits; setting them
        // here keeps the guest correct on any loader).
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
            entry = sym __ipivirt_entry,
        );
    };
}
pub(crate) use entry_point;

/// The Rust entry of vCPU `index` (see [`entry_point!`]).
pub fn start(index: u32, program: &Program) -> ! {
    if index == 0 {
        bsp_main(program)
    } else {
        ap_main(index, program)
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
        (*status).apic_id = arch::x2apic_id();
        (*status).mode = running_mode();
        (*status).online_tsc = arch::rdtsc();
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
fn init_cpu(index: u32, control: &Control) {
    percpu::init(index);
    trap::init_cpu();
    choose_mode(index, control);
    apic::init();
    percpu::seed(control.seed);
    if pv::steal_registered() {
        pv::enable_steal_time(index);
    }
}

/// The [`guest_mode`] this kernel runs in.
fn running_mode() -> u32 {
    if arch::native() {
        guest_mode::PVM_NATIVE
    } else {
        guest_mode::PLAIN
    }
}

/// Enters the PVM host's native mode where the control block asks for it
/// (between the descriptor tables and the first interrupt source). The
/// BSP decides; the APs follow it, and one that cannot is fatal (tasks
/// migrate: there is no mixed mode). A failure before the switch leaves the
/// BSP in plain mode (`auto`) or stops the run (`pvm`); one after it stops
/// the run, since the CPU is in neither mode.
fn choose_mode(index: u32, control: &Control) {
    let vif = layout::vif_page(index);
    if index != 0 {
        if arch::native() {
            // SAFETY: called between trap::init_cpu and apic::init, with the
            // VMM's page tables user-accessible (host_pvm); the VIF page is
            // this vCPU's.
            if let Err(e) = unsafe { arch::enter_native(vif, false, false) } {
                panic!(
                    "vCPU {}: native mode: {}",
                    Dec(index),
                    native_error::describe(e)
                );
            }
        }
        return;
    }
    let wanted = match control.guest_mode {
        guest_mode::PLAIN => false,
        guest_mode::PVM_NATIVE => true,
        _ => control.host_pvm != 0,
    };
    if !wanted {
        return;
    }
    // SAFETY: as above, on the BSP.
    let outcome = unsafe { arch::enter_native(vif, true, true) };
    let Err(e) = outcome else {
        return;
    };
    let before_switch = matches!(e, native_error::NOT_DETECTED | native_error::SWITCH_FAULTED);
    if control.guest_mode == guest_mode::PVM_NATIVE {
        panic!(
            "native mode (--guest-mode pvm): {}",
            native_error::describe(e)
        );
    }
    if !before_switch {
        // The CPU is in neither mode now: no fallback is possible.
        panic!(
            "native mode failed after the switch: {} (--guest-mode plain runs the plain kernel)",
            native_error::describe(e)
        );
    }
    // SAFETY: BSP-only field of the shared page.
    unsafe { (*shared::results()).native_error = e };
    println!(
        "native mode not entered ({}): running the plain kernel",
        native_error::describe(e)
    );
}

fn bsp_main(program: &Program) -> ! {
    let boot_tsc = arch::rdtsc();
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
        Dec(arch::x2apic_id())
    );
    heap::init(layout::FREE_MEM_ADDR, control.mem_size);
    trap::init_idt();
    sched::configure(&control);
    guest_lib::cpumask::set_nr_cpu_ids(control.nr_vcpus);
    pv::configure(&control);
    hotplug::configure(&control);
    init_cpu(0, &control);
    // SAFETY: BSP-only field.
    unsafe { (*results).mode = running_mode() };
    (program.init)(&control);
    sched::start_cpu(true);
    arch::outl(Port::Status as u16, GuestStatus::StartAps as u32);
    come_online(0, control.nr_vcpus);
    wait_all_online(control.nr_vcpus);
    // SAFETY: BSP-only field.
    unsafe { (*results).all_online_tsc = arch::rdtsc() };
    arch::outl(Port::Status as u16, GuestStatus::AllOnline as u32);
    hooks::on_vcpu(&control, 0);
    (program.bsp)(&control);
    arch::irq_disable();
    write_counters(control.nr_vcpus);
    publish_results(&control);
    arch::outl(Port::Status as u16, GuestStatus::Done as u32);
    arch::halt_forever()
}

/// Sleeps until the last AP's IPI (no emulated spinning).
fn wait_all_online(nr_vcpus: u32) {
    loop {
        arch::irq_disable();
        if online_counter().load(Ordering::Acquire) >= nr_vcpus {
            break;
        }
        // SAFETY: IDT, APIC and scheduler are set up on this CPU.
        unsafe { arch::safe_halt() };
    }
}

/// Whether every vCPU is online (for programs that wait for it on APs).
pub fn all_online(nr_vcpus: u32) -> bool {
    online_counter().load(Ordering::Acquire) >= nr_vcpus
}

/// The results magic, written last (Release) so that the VMM never sees a
/// half-written block as complete; two test hooks corrupt the block here.
fn publish_results(control: &Control) {
    let results = shared::results();
    // SAFETY: BSP-only fields of the shared page.
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
}

/// Copies every vCPU's counters into its status entry, and the task
/// totals into the results.
fn write_counters(nr: u32) {
    for c in 0..nr {
        let pc = percpu::of(c);
        let s = shared::vcpu(c);
        // SAFETY: the BSP writes the counter fields of every status entry
        // once the program is over (the owners only wrote `state` etc.).
        unsafe {
            (*s).sched = abi::SchedCounts {
                context_switches: pc.context_switches.get(),
                preemptions: pc.preemptions.get(),
                migrations_in: pc.migrations_in.load(Ordering::Relaxed),
                ticks: pc.ticks.get(),
                ipis_sent: pc.ipis_sent.get(),
                ipis_received: pc.ipis_received.get(),
            };
            (*s).halt_rollbacks = pc.halt_rollbacks.get() as u32;
            (*s).hotplug = hotplug::vcpu_record(c, pc.context_switches.get());
            // The spin workload writes its own (workload-only) figure.
            if pv::steal_registered() && (*s).steal_ns == 0 {
                (*s).steal_ns = pv::steal_ns(c);
            }
        }
    }
    let r = shared::results();
    // SAFETY: BSP-only fields.
    unsafe {
        (*r).tasks_created = sched::CREATED.load(Ordering::Relaxed);
        (*r).tasks_freed = sched::FREED.load(Ordering::Relaxed);
    }
}

fn ap_main(index: u32, program: &Program) -> ! {
    let control = shared::control();
    init_cpu(index, &control);
    // Hooks fire in the mode under test, before the AP counts itself
    // online, so the BSP can never report Done ahead of the failure it is
    // meant to expose.
    hooks::on_vcpu(&control, index);
    sched::start_cpu(false);
    come_online(index, control.nr_vcpus);
    hooks::late_on_vcpu(&control, index, || all_online(control.nr_vcpus));
    (program.ap)(&control, index);
    sched::idle_loop()
}
