//! The arch seam: every privileged or platform-specific operation the
//! kernel performs goes through this module, so that nothing above it
//! (scheduler, cross-call layer, designs, workloads, checker) knows which
//! backend runs, except through [`native`] for the report.
//!
//! The operations:
//! - interrupts: [`irq_disable`], [`irq_enable`], [`irq_save`],
//!   [`irq_restore`], [`irqs_enabled`], [`frame_irqs_enabled`];
//! - halting: [`safe_halt`] (enable and halt without a wake-up race),
//!   [`halt_forever`];
//! - the local APIC: [`x2apic_write`] (ICR, EOI, TSC deadline);
//! - traps: the entry stubs and the return to kernel and user mode
//!   ([`entry`]), the fault address ([`fault_address`]), the exception
//!   fixups ([`fixup`]) and the return from an interrupted halt
//!   ([`on_trap_return`]);
//! - user mode: [`enter_user`], the system-call instruction ([`sys`]) and
//!   its recognition on entry ([`is_user_syscall`]);
//! - CR3 and TLB: none yet (the guest runs on the VMM's identity map and its
//!   shootdown callback flushes nothing); they belong here when they come.
//!
//! Two backends: [`plain`], an ordinary CPL0 kernel (native on VMX/SVM
//! hosts, emulated on PVM hosts), and [`pvm`], the PVM host's native mode,
//! which each vCPU enters with [`enter_native`] during its bring-up. Boot
//! set-up (descriptor tables, MSRs, CPUID, the TSC, port I/O) is in
//! [`x86`], shared by both.
//!
//! The interrupt-flag operations and [`safe_halt`] report every change of
//! the flag to the preempt-off tracer ([`crate::kernel::trace`]).
//!
//! Hot operations test one global flag ([`native`]), set once by the BSP
//! before any AP starts; cold ones that may run before a CPU switched
//! (halting for good) test the CPU itself.

pub mod entry;
mod plain;
mod pvm;
mod x86;

use core::sync::atomic::{AtomicBool, Ordering};

use crate::kernel::trace;

pub use entry::TrapFrame;
pub use plain::{enter_user, is_user_syscall, SYSCALL_INSN_LEN};
pub use pvm::SYSCALL_VECTOR;
pub use x86::*;

/// Set by the BSP once it runs in native mode (before any AP starts), so
/// every CPU's arch operations use the PVM backend from its own switch on.
static NATIVE: AtomicBool = AtomicBool::new(false);

/// Whether the kernel runs in the PVM host's native mode.
#[inline(always)]
pub fn native() -> bool {
    NATIVE.load(Ordering::Relaxed)
}

/// A system call from a user task: number `nr`, argument `a0`, result in
/// the return value. Plain: `ud2` (the one entry that works on every host,
/// see [`entry`]). Native: `syscall` (a quarter of the cost).
#[inline(always)]
pub fn sys(nr: u64, a0: u64) -> u64 {
    if native() {
        pvm::sys(nr, a0)
    } else {
        plain::sys(nr, a0)
    }
}

/// Whether interrupts are enabled on this CPU.
#[inline]
pub fn irqs_enabled() -> bool {
    if native() {
        pvm::irqs_enabled()
    } else {
        plain::irqs_enabled()
    }
}

/// Disables interrupts.
#[inline]
pub fn irq_disable() {
    let was = if native() {
        let was = pvm::irqs_enabled();
        pvm::irq_disable();
        was
    } else {
        plain::irq_save()
    };
    trace::irqs_off(was);
}

/// Enables interrupts.
///
/// # Safety
/// The IDT and the interrupt stacks must be set up.
#[inline]
pub unsafe fn irq_enable() {
    trace::irqs_on();
    // SAFETY: delegated to the caller.
    unsafe {
        if native() {
            pvm::irq_enable()
        } else {
            plain::irq_enable()
        }
    }
}

/// Disables interrupts and returns whether they were enabled.
#[inline]
pub fn irq_save() -> bool {
    let was = if native() {
        pvm::irq_save()
    } else {
        plain::irq_save()
    };
    trace::irqs_off(was);
    was
}

/// Re-enables interrupts if `was` says they were enabled.
#[inline]
pub fn irq_restore(was: bool) {
    if was {
        trace::irqs_on();
    }
    if native() {
        pvm::irq_restore(was)
    } else {
        plain::irq_restore(was)
    }
}

/// Enables interrupts and halts until one arrives, with no window in which
/// an interrupt could be missed.
///
/// # Safety
/// As [`irq_enable`].
#[inline]
pub unsafe fn safe_halt() {
    trace::irqs_on();
    // SAFETY: delegated to the caller.
    unsafe {
        if native() {
            pvm::safe_halt()
        } else {
            plain::safe_halt()
        }
    }
}

/// Disables interrupts and halts this vCPU for good. With the in-kernel
/// irqchip the vCPU then sleeps inside KVM until the VMM kicks its thread.
pub fn halt_forever() -> ! {
    if pvm::on_native_cpu() {
        pvm::halt_forever()
    } else {
        plain::halt_forever()
    }
}

/// Writes an x2APIC register (an MSR in 0x800..0x8ff: ICR, EOI, timer).
///
/// # Safety
/// As [`wrmsr`]: the caller knows what the register controls.
#[inline]
pub unsafe fn x2apic_write(reg: u32, value: u64) {
    // SAFETY: delegated to the caller.
    unsafe {
        if native() {
            pvm::x2apic_write(reg, value)
        } else {
            plain::x2apic_write(reg, value)
        }
    }
}

/// The faulting address of the last page fault on this CPU.
pub fn fault_address() -> u64 {
    if pvm::on_native_cpu() {
        pvm::fault_address()
    } else {
        plain::fault_address()
    }
}

/// Whether the context `frame` interrupted had interrupts enabled: its
/// saved RFLAGS.IF in both modes (natively the host sets it from the
/// virtual IF, and interrupts only arrive with that on).
#[inline]
pub fn frame_irqs_enabled(frame: &TrapFrame) -> bool {
    plain::frame_irqs_enabled(frame)
}

/// Writes console bytes (at most [`abi::layout::CONSOLE_BUFFER_SIZE`]) to
/// the VMM. Plain: one `rep outsb` (one exit per page at most). Native: the
/// host takes one exit per byte of a `rep outsb`, so the bytes go through
/// this vCPU's console buffer with one `out` of their length. Call with
/// interrupts off (the buffer is this vCPU's).
pub fn console_write(bytes: &[u8]) {
    if pvm::on_native_cpu() {
        let len = bytes.len().min(abi::layout::CONSOLE_BUFFER_SIZE as usize);
        let buf = abi::layout::console_buffer(crate::kernel::percpu::cpu_id()) as *mut u8;
        // SAFETY: this vCPU's console buffer (fixed layout, identity-mapped,
        // CONSOLE_BUFFER_SIZE bytes); interrupts are off, so nothing else on
        // this vCPU writes it until the VMM has read it in the `out`.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, len) };
        outl(abi::Port::ConsoleBuffer as u16, len as u32);
    } else {
        outsb(abi::Port::Console as u16, bytes);
    }
}

/// The exception fixups of the mode probe: a #GP there resumes after the
/// probing instruction instead of being fatal. Returns whether it applied.
pub fn fixup(frame: &mut TrapFrame) -> bool {
    pvm::fixup(frame)
}

/// Adjusts a trap's return before it happens: in native mode an interrupt
/// that landed between [`safe_halt`]'s IF store and its `hlt` returns past
/// the `hlt` (it was the wake-up).
#[inline]
pub fn on_trap_return(frame: &mut TrapFrame) {
    if native() {
        pvm::rollback_idle_halt(frame);
    }
}

/// Why entering native mode failed ([`abi::native_error`] codes).
pub type NativeError = u32;

/// Above this many cycles per 1024 `dec; jnz`, kernel code is emulated (the
/// hardware takes about 1,000; the emulator about 3,000,000).
pub const EMULATED_THRESHOLD: u64 = 20 * 1024;

/// Times 1024 x `dec; jnz` in the kernel, best of 8.
pub fn kernel_loop_cycles() -> u64 {
    let mut best = u64::MAX;
    for _ in 0..8 {
        let t0 = rdtsc();
        // SAFETY: a register-only loop.
        unsafe {
            core::arch::asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) 1024u64 => _, options(nomem, nostack))
        };
        best = best.min(rdtsc() - t0);
    }
    best
}

/// Switches this vCPU to the PVM host's native mode and checks that it
/// took: the CPU runs at hardware CPL3 with the virtual IF off, and kernel
/// code is no longer emulated. `detect` first reads the host's signature
/// (the BSP; the APs follow it). On success, the BSP's call makes every
/// arch operation use the PVM backend.
///
/// # Safety
/// As `pvm::switch`: descriptor tables and GS base loaded, no interrupt
/// source yet, every kernel page user-accessible; `vif` is this vCPU's
/// private page-aligned VIF page.
pub unsafe fn enter_native(vif: u64, detect: bool, is_bsp: bool) -> Result<(), NativeError> {
    if detect && pvm::signature() != pvm::PVM_SIGNATURE {
        return Err(abi::native_error::NOT_DETECTED);
    }
    // SAFETY: the page is this vCPU's (caller); zero if_ and pending before
    // the host reads them.
    unsafe { core::ptr::write_bytes(vif as *mut u8, 0, 4096) };
    // SAFETY: FS base points at the VIF page, so the backend's fs:[0] is
    // this vCPU's virtual IF from the switch on.
    unsafe { wrmsr(msr::FS_BASE, vif) };
    // SAFETY: delegated to the caller.
    if !unsafe { pvm::switch(vif) } {
        return Err(abi::native_error::SWITCH_FAULTED);
    }
    if !pvm::on_native_cpu() {
        return Err(abi::native_error::STILL_CPL0);
    }
    if kernel_loop_cycles() > EMULATED_THRESHOLD {
        return Err(abi::native_error::STILL_EMULATED);
    }
    if is_bsp && pvm::hypercall_abi_mismatch() != 0 {
        return Err(abi::native_error::HYPERCALL_ABI);
    }
    // SAFETY: this vCPU now runs in native mode, descriptor tables and GS
    // set up (caller).
    unsafe { pvm::enable_syscall() };
    if is_bsp {
        NATIVE.store(true, Ordering::Relaxed);
    }
    Ok(())
}
